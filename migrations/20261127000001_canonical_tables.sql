-- The six canonical CloudPods tables (seed spec §3), with the constraints, keys and
-- indexes correctness needs. Table and column names are the seed's; every extra column
-- is commented. Constraints are named explicitly so errors and tests can refer to them.

-- Keeps updated_at current on every UPDATE that changes the row (no bump on no-op updates).
CREATE FUNCTION cloud_pods_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

-- §3.4 Commercial plans (the CLOUD_POD_PLANS catalog, upserted by `cloudpods migrate`).
CREATE TABLE cloud_pod_plans (
    code                TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    price_monthly       NUMERIC(10, 2) NOT NULL,
    vcpu                INTEGER NOT NULL,
    ram_mb              INTEGER NOT NULL,
    storage_gb          INTEGER NOT NULL,
    bandwidth_gb        INTEGER NULL,           -- monthly transfer; NULL only when unmetered
    bandwidth_type      TEXT NOT NULL DEFAULT 'metered',
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    max_pods_per_tenant INTEGER NULL,
    billing_product_id  TEXT NULL,
    sort_order          INTEGER NOT NULL DEFAULT 0,   -- display order in plan lists
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT cloud_pod_plans_code_check
        CHECK (code ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(code) <= 63),
    CONSTRAINT cloud_pod_plans_name_check CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    CONSTRAINT cloud_pod_plans_price_monthly_check CHECK (price_monthly >= 0),
    CONSTRAINT cloud_pod_plans_vcpu_check CHECK (vcpu > 0),
    CONSTRAINT cloud_pod_plans_ram_mb_check CHECK (ram_mb > 0),
    CONSTRAINT cloud_pod_plans_storage_gb_check CHECK (storage_gb > 0),
    CONSTRAINT cloud_pod_plans_bandwidth_gb_check CHECK (bandwidth_gb > 0),
    CONSTRAINT cloud_pod_plans_bandwidth_type_check
        CHECK (bandwidth_type IN ('metered', 'unmetered')),
    CONSTRAINT cloud_pod_plans_metered_bandwidth_check
        CHECK (bandwidth_type <> 'metered' OR bandwidth_gb IS NOT NULL),
    CONSTRAINT cloud_pod_plans_max_pods_per_tenant_check CHECK (max_pods_per_tenant > 0),
    CONSTRAINT cloud_pod_plans_billing_product_id_check
        CHECK (length(billing_product_id) BETWEEN 1 AND 128)
);

-- §3.5 Proxmox templates a VM is cloned from.
CREATE TABLE cloud_pod_blueprints (
    code                  TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    proxmox_template_vmid INTEGER NOT NULL,
    default_node          TEXT NOT NULL,
    storage_pool          TEXT NOT NULL,
    network_bridge        TEXT NOT NULL,
    cloud_init_profile    JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_active             BOOLEAN NOT NULL DEFAULT TRUE,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT cloud_pod_blueprints_code_check
        CHECK (code ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(code) <= 63),
    CONSTRAINT cloud_pod_blueprints_name_check CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    CONSTRAINT cloud_pod_blueprints_proxmox_template_vmid_check
        CHECK (proxmox_template_vmid BETWEEN 100 AND 999999999),
    CONSTRAINT cloud_pod_blueprints_default_node_check
        CHECK (default_node ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(default_node) <= 63),
    CONSTRAINT cloud_pod_blueprints_storage_pool_check
        CHECK (storage_pool ~ '^[a-z][-a-z0-9_.]*$' AND length(storage_pool) <= 63),
    CONSTRAINT cloud_pod_blueprints_network_bridge_check
        CHECK (network_bridge ~ '^vmbr[0-9]{1,4}$'),
    CONSTRAINT cloud_pod_blueprints_cloud_init_profile_check
        CHECK (jsonb_typeof(cloud_init_profile) = 'object')
);

-- §3.6 Per-tenant limits; no row means the configured defaults (seed §4.3).
CREATE TABLE cloud_pod_quotas (
    tenant_id     TEXT PRIMARY KEY,
    max_pods      INTEGER NOT NULL,
    max_cpu_cores INTEGER NOT NULL,
    max_memory_mb INTEGER NOT NULL,
    max_disk_gb   INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT cloud_pod_quotas_tenant_id_check
        CHECK (tenant_id ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(tenant_id) <= 63),
    CONSTRAINT cloud_pod_quotas_max_pods_check CHECK (max_pods >= 0),
    CONSTRAINT cloud_pod_quotas_max_cpu_cores_check CHECK (max_cpu_cores >= 0),
    CONSTRAINT cloud_pod_quotas_max_memory_mb_check CHECK (max_memory_mb >= 0),
    CONSTRAINT cloud_pod_quotas_max_disk_gb_check CHECK (max_disk_gb >= 0)
);

-- §3.1 The authoritative record of each CloudPod (one per CloudPod custom resource).
CREATE TABLE cloud_pods (
    id                 TEXT PRIMARY KEY,        -- e.g. pod-1764399306066
    tenant_id          TEXT NOT NULL,
    user_id            TEXT NULL,
    plan_code          TEXT NOT NULL REFERENCES cloud_pod_plans (code),
    blueprint_code     TEXT NOT NULL REFERENCES cloud_pod_blueprints (code), -- extra: template it was built from
    vmid               INTEGER NULL,            -- reserved before the clone starts
    node               TEXT NULL,
    ip_address         INET NULL,
    status             TEXT NOT NULL DEFAULT 'pending',
    cpu_cores          INTEGER NOT NULL,
    memory_mb          INTEGER NOT NULL,
    disk_gb            INTEGER NOT NULL,
    provisioning_state JSONB NOT NULL DEFAULT '{}'::jsonb,
    hostname           TEXT NULL,               -- extra: guest hostname (DNS label)
    k8s_uid            UUID NOT NULL,           -- extra: the CloudPod's metadata.uid
    k8s_namespace      TEXT NOT NULL,           -- extra: where the CloudPod lives
    k8s_name           TEXT NOT NULL,           -- extra: the CloudPod's metadata.name
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at         TIMESTAMPTZ NULL,
    CONSTRAINT cloud_pods_vmid_key UNIQUE (vmid),
    CONSTRAINT cloud_pods_k8s_uid_key UNIQUE (k8s_uid),
    CONSTRAINT cloud_pods_id_check
        CHECK (id ~ '^pod-[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(id) <= 63),
    CONSTRAINT cloud_pods_tenant_id_check
        CHECK (tenant_id ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(tenant_id) <= 63),
    CONSTRAINT cloud_pods_user_id_check
        CHECK (user_id ~ '^[A-Za-z0-9._@:-]+$' AND length(user_id) <= 128),
    CONSTRAINT cloud_pods_vmid_check CHECK (vmid BETWEEN 100 AND 999999999),
    CONSTRAINT cloud_pods_node_check
        CHECK (node ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(node) <= 63),
    CONSTRAINT cloud_pods_status_check
        CHECK (status IN ('pending', 'provisioning', 'active', 'error', 'deleting', 'deleted')),
    CONSTRAINT cloud_pods_cpu_cores_check CHECK (cpu_cores > 0),
    CONSTRAINT cloud_pods_memory_mb_check CHECK (memory_mb > 0),
    CONSTRAINT cloud_pods_disk_gb_check CHECK (disk_gb > 0),
    CONSTRAINT cloud_pods_provisioning_state_check
        CHECK (jsonb_typeof(provisioning_state) = 'object'),
    CONSTRAINT cloud_pods_hostname_check
        CHECK (hostname ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(hostname) <= 63),
    CONSTRAINT cloud_pods_k8s_namespace_check
        CHECK (k8s_namespace ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(k8s_namespace) <= 63),
    CONSTRAINT cloud_pods_k8s_name_check
        CHECK (k8s_name ~ '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' AND length(k8s_name) <= 253),
    CONSTRAINT cloud_pods_deleted_at_check
        CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);

-- Quota usage sums a tenant's live pods.
CREATE INDEX cloud_pods_tenant_live_idx ON cloud_pods (tenant_id) WHERE deleted_at IS NULL;
CREATE INDEX cloud_pods_status_idx ON cloud_pods (status);
CREATE INDEX cloud_pods_k8s_ref_idx ON cloud_pods (k8s_namespace, k8s_name);
CREATE INDEX cloud_pods_plan_code_idx ON cloud_pods (plan_code);
CREATE INDEX cloud_pods_blueprint_code_idx ON cloud_pods (blueprint_code);

-- §3.3 One user-level action that may span several queue items.
CREATE TABLE cloud_pod_jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    user_id         TEXT NULL,
    pod_id          TEXT NULL REFERENCES cloud_pods (id),  -- extra: the pod it acts on
    type            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    queue_item_ids  JSONB NOT NULL DEFAULT '[]'::jsonb,
    idempotency_key TEXT NULL,                             -- extra: replayed requests find the same job
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT cloud_pod_jobs_tenant_idempotency_key_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT cloud_pod_jobs_tenant_id_check
        CHECK (tenant_id ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(tenant_id) <= 63),
    CONSTRAINT cloud_pod_jobs_user_id_check
        CHECK (user_id ~ '^[A-Za-z0-9._@:-]+$' AND length(user_id) <= 128),
    CONSTRAINT cloud_pod_jobs_type_check
        CHECK (type IN ('provision', 'destroy', 'scale', 'start', 'stop', 'reboot', 'backup', 'sync')),
    CONSTRAINT cloud_pod_jobs_status_check
        CHECK (status IN ('pending', 'running', 'success', 'failed')),
    CONSTRAINT cloud_pod_jobs_queue_item_ids_check
        CHECK (jsonb_typeof(queue_item_ids) = 'array'),
    CONSTRAINT cloud_pod_jobs_idempotency_key_check
        CHECK (length(idempotency_key) BETWEEN 1 AND 255)
);

CREATE INDEX cloud_pod_jobs_pod_id_idx ON cloud_pod_jobs (pod_id);
CREATE INDEX cloud_pod_jobs_tenant_created_idx ON cloud_pod_jobs (tenant_id, created_at);

-- §3.2 The work queue. Only the worker sets running/success/failed.
CREATE TABLE cloud_pod_queue (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pod_id           TEXT NOT NULL REFERENCES cloud_pods (id),
    job_id           BIGINT NULL REFERENCES cloud_pod_jobs (id), -- extra: grouping job
    action           TEXT NOT NULL,
    payload          JSONB NOT NULL DEFAULT '{}'::jsonb,
    status           TEXT NOT NULL DEFAULT 'queued',
    retry_count      INTEGER NOT NULL DEFAULT 0,
    error_message    TEXT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,      -- extra: fencing token, bumped by every claim
    max_attempts     INTEGER NOT NULL DEFAULT 5,      -- extra: give up (failed) after this many claims
    lease_owner      TEXT NULL,                       -- extra: worker holding the item
    lease_expires_at TIMESTAMPTZ NULL,                -- extra: reclaimable after this
    run_after        TIMESTAMPTZ NOT NULL DEFAULT now(), -- extra: next-run time (retry backoff)
    result           JSONB NULL,                      -- extra: Proxmox task outcome
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at     TIMESTAMPTZ NULL,
    CONSTRAINT cloud_pod_queue_action_check
        CHECK (action IN ('create', 'destroy', 'start', 'stop', 'reboot', 'backup', 'scale', 'sync')),
    CONSTRAINT cloud_pod_queue_status_check
        CHECK (status IN ('queued', 'running', 'success', 'failed')),
    CONSTRAINT cloud_pod_queue_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT cloud_pod_queue_retry_count_check CHECK (retry_count >= 0),
    CONSTRAINT cloud_pod_queue_attempt_check CHECK (attempt >= 0),
    CONSTRAINT cloud_pod_queue_max_attempts_check CHECK (max_attempts >= 1),
    CONSTRAINT cloud_pod_queue_lease_check
        CHECK (status <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT cloud_pod_queue_processed_at_check
        CHECK (status NOT IN ('success', 'failed') OR processed_at IS NOT NULL)
);

-- Claiming the next job: the oldest due queued item.
CREATE INDEX cloud_pod_queue_claim_idx ON cloud_pod_queue (run_after, id) WHERE status = 'queued';
-- Reclaiming items whose worker died.
CREATE INDEX cloud_pod_queue_lease_idx ON cloud_pod_queue (lease_expires_at) WHERE status = 'running';
-- At most one operation runs on one pod (VM) at a time (architecture invariant 3).
CREATE UNIQUE INDEX cloud_pod_queue_one_running_per_pod ON cloud_pod_queue (pod_id) WHERE status = 'running';
CREATE INDEX cloud_pod_queue_pod_id_idx ON cloud_pod_queue (pod_id, id);
CREATE INDEX cloud_pod_queue_job_id_idx ON cloud_pod_queue (job_id) WHERE job_id IS NOT NULL;

-- Wake-up hint for workers (payload: queue item id). Workers still poll: notifications
-- are lost while a listener is disconnected.
CREATE FUNCTION cloud_pod_queue_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cloud_pod_queue', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER cloud_pod_queue_notify_insert
    AFTER INSERT ON cloud_pod_queue
    FOR EACH ROW EXECUTE FUNCTION cloud_pod_queue_notify_insert();

-- Tells the controller an item finished (payload: pod id) so it re-reconciles that pod.
CREATE FUNCTION cloud_pod_queue_notify_done() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cloud_pod_queue_done', NEW.pod_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER cloud_pod_queue_notify_done
    AFTER UPDATE OF status ON cloud_pod_queue
    FOR EACH ROW
    WHEN (NEW.status IN ('success', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION cloud_pod_queue_notify_done();

CREATE TRIGGER cloud_pod_plans_touch_updated_at BEFORE UPDATE ON cloud_pod_plans
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();
CREATE TRIGGER cloud_pod_blueprints_touch_updated_at BEFORE UPDATE ON cloud_pod_blueprints
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();
CREATE TRIGGER cloud_pod_quotas_touch_updated_at BEFORE UPDATE ON cloud_pod_quotas
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();
CREATE TRIGGER cloud_pods_touch_updated_at BEFORE UPDATE ON cloud_pods
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();
CREATE TRIGGER cloud_pod_jobs_touch_updated_at BEFORE UPDATE ON cloud_pod_jobs
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();
CREATE TRIGGER cloud_pod_queue_touch_updated_at BEFORE UPDATE ON cloud_pod_queue
    FOR EACH ROW EXECUTE FUNCTION cloud_pods_touch_updated_at();

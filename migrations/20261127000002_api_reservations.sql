-- The REST API admits an order (quota reservation) in one transaction BEFORE it creates the
-- CloudPod resource, so the row exists for a moment without the resource's uid. Only a
-- `pending` (or already `deleted`) row may lack it; the controller fills it in from the CR.
ALTER TABLE cloud_pods ALTER COLUMN k8s_uid DROP NOT NULL;
ALTER TABLE cloud_pods ADD CONSTRAINT cloud_pods_k8s_uid_check
    CHECK (k8s_uid IS NOT NULL OR status IN ('pending', 'deleted'));

-- Resources admitted by quota but not yet effective (a pending scale). Quota usage counts
-- GREATEST(effective, reserved) per pod, so a scale holds its quota from admission until the
-- worker has applied it; the controller clears these once the VM has the new size.
ALTER TABLE cloud_pods
    ADD COLUMN reserved_cpu_cores INTEGER NULL,
    ADD COLUMN reserved_memory_mb INTEGER NULL,
    ADD COLUMN reserved_disk_gb   INTEGER NULL,
    ADD CONSTRAINT cloud_pods_reserved_cpu_cores_check CHECK (reserved_cpu_cores > 0),
    ADD CONSTRAINT cloud_pods_reserved_memory_mb_check CHECK (reserved_memory_mb > 0),
    ADD CONSTRAINT cloud_pods_reserved_disk_gb_check CHECK (reserved_disk_gb > 0);

-- A replayed request (same Idempotency-Key) must carry the same body; the API stores a
-- SHA-256 of the canonical request to tell a replay from a conflicting reuse of the key.
ALTER TABLE cloud_pod_jobs
    ADD COLUMN request_hash TEXT NULL,
    ADD CONSTRAINT cloud_pod_jobs_request_hash_check CHECK (request_hash ~ '^[0-9a-f]{64}$');

-- Admin stats count recent failures.
CREATE INDEX cloud_pod_queue_failed_recent_idx ON cloud_pod_queue (updated_at) WHERE status = 'failed';
-- Listing a tenant's pods newest first.
CREATE INDEX cloud_pods_tenant_created_idx ON cloud_pods (tenant_id, created_at DESC, id DESC);

//! The REST API end to end: real Kubernetes API server, real Postgres, the server in-process.

mod common;

use common::api::{TestApi, assert_conforms, tenant};
use hyper::StatusCode;
use serde_json::{Value, json};

async fn openapi(api: &TestApi) -> Value {
    let a = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    a.body
}

fn order_body(name: &str) -> Value {
    json!({ "planCode": "student", "blueprint": "ubuntu-24-minimal", "name": name })
}

#[tokio::test]
async fn public_catalog_plans_plan_and_compare() {
    let api = TestApi::start().await;
    let doc = openapi(&api).await;

    let a = api.call("GET", "/plans", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_conforms(&doc, "PlanList", &a.body);
    let codes: Vec<&str> = a.body["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["student", "starter", "premium", "business"]);

    let a = api.call("GET", "/plans/starter", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_conforms(&doc, "PlanView", &a.body);
    assert_eq!(a.body["vcpu"], 1);
    assert_eq!(a.body["ramMb"], 2048);
    assert_eq!(a.body["storageGb"], 40);
    assert_eq!(a.body["priceMonthly"], 9.99);

    let a = api.call("GET", "/plans/nope", None, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    assert_conforms(&doc, "ErrorBody", &a.body);

    let a = api.call("GET", "/compare", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_conforms(&doc, "Comparison", &a.body);
    let rows = a.body["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["values"].as_array().unwrap().len() == 4)
    );
    let ram = rows.iter().find(|r| r["key"] == "ramMb").unwrap();
    assert_eq!(ram["values"], json!([1024, 2048, 4096, 8192]));
}

#[tokio::test]
async fn order_creates_the_cloudpod_row_and_job_and_the_pod_can_be_read_by_id_or_vmid() {
    let api = TestApi::start().await;
    let doc = openapi(&api).await;
    let t = tenant("acme");
    let token = api.user(&t);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ0ZXN0a2V5Zm9ydGhlY2xvdWRwb2RzYXBpdGVzdHM= me@laptop";
    let a = api
        .call(
            "POST",
            "/order",
            Some(&token),
            Some(&json!({
                "planCode": "starter", "blueprint": "ubuntu-24-minimal", "name": "web-1",
                "options": { "sshPublicKeys": [key], "user": "deploy", "powerState": "Stopped" }
            })),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_conforms(&doc, "Accepted", &a.body);
    let pod_id = a.body["podId"].as_str().unwrap().to_string();
    let job_id = a.body["jobId"].as_i64().unwrap();
    assert_eq!(a.body["status"], "pending");
    assert_eq!(a.body["replayed"], false);
    assert_eq!(a.body["statusUrl"], format!("/api/cloud-pods/{pod_id}"));
    assert_eq!(
        a.headers["location"].to_str().unwrap(),
        format!("/api/cloud-pods/{pod_id}")
    );

    // The CloudPod, written with the API's field manager.
    let cr = api.pods().get(&pod_id).await.expect("CloudPod exists");
    assert_eq!(cr.spec.tenant_id, t);
    assert_eq!(cr.spec.plan_code, "starter");
    assert_eq!(cr.spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(
        cr.spec.user_id.as_deref(),
        Some(format!("user-{t}").as_str())
    );
    assert_eq!(cr.spec.power_state, cloudpods::crd::PowerState::Stopped);
    let ci = cr.spec.cloud_init.as_ref().unwrap();
    assert_eq!(ci.user.as_deref(), Some("deploy"));
    assert_eq!(ci.ssh_public_keys, vec![key.to_string()]);
    let labels = cr.metadata.labels.clone().unwrap();
    assert_eq!(labels["cloudpods.migrahosting.com/tenant"], t);
    let managers: Vec<String> = cr
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"cloudpods-api".to_string()),
        "{managers:?}"
    );

    // The reservation row carries the CR's uid; the job groups the order.
    let (status, uid, cpu, mem, disk): (String, Option<uuid::Uuid>, i32, i32, i32) =
        sqlx::query_as(
            "SELECT status, k8s_uid, cpu_cores, memory_mb, disk_gb FROM cloud_pods WHERE id = $1",
        )
        .bind(&pod_id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");
    assert_eq!(uid.map(|u| u.to_string()), cr.metadata.uid);
    assert_eq!((cpu, mem, disk), (1, 2048, 40));
    let (jtype, jpod): (String, String) =
        sqlx::query_as("SELECT type, pod_id FROM cloud_pod_jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(
        (jtype.as_str(), jpod.as_str()),
        ("provision", pod_id.as_str())
    );

    // Read back by id, in the list, and (once the controller has a VMID) by VMID.
    let a = api
        .call("GET", &format!("/{pod_id}"), Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_conforms(&doc, "PodView", &a.body);
    assert_eq!(a.body["name"], "web-1");
    let a = api.call("GET", "", Some(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_conforms(&doc, "PodList", &a.body);
    assert_eq!(a.body["total"], 1);
    assert_eq!(a.body["items"][0]["podId"], pod_id.as_str());
    api.make_active(&pod_id, 4321).await;
    let a = api.call("GET", "/4321", Some(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["podId"], pod_id.as_str());
    assert_eq!(a.body["ipAddress"], "10.0.0.10");

    // Health: the record is active; the controller has not reported readiness yet.
    let a = api.call("GET", "/4321/health", Some(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_conforms(&doc, "Health", &a.body);
    assert_eq!(a.body["healthy"], false);
    let checks = a.body["checks"].as_array().unwrap();
    let by = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap()["status"].clone();
    assert_eq!(by("record"), "pass");
    assert_eq!(by("network"), "pass");
    assert_eq!(by("ready"), "unknown");
}

#[tokio::test]
async fn list_paginates_newest_first_and_filters() {
    let api = TestApi::start().await;
    let t = tenant("pages");
    api.set_quota(&t, 10, 100, 100_000, 10_000).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.order(&t, &format!("p{i}")).await["podId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let token = api.user(&t);
    let a = api
        .call("GET", "?page=1&pageSize=2", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["total"], 5);
    let page1: Vec<&str> = a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["podId"].as_str().unwrap())
        .collect();
    assert_eq!(page1, [ids[4].as_str(), ids[3].as_str()]);
    let a = api
        .call("GET", "?page=3&pageSize=2", Some(&token), None)
        .await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(a.body["items"][0]["podId"], ids[0].as_str());
    api.make_active(&ids[1], 777).await;
    let a = api.call("GET", "?status=active", Some(&token), None).await;
    assert_eq!(a.body["total"], 1);
    assert_eq!(a.body["items"][0]["vmid"], 777);
}

#[tokio::test]
async fn twenty_concurrent_orders_against_max_pods_3_admit_exactly_3() {
    let api = TestApi::start().await;
    let t = tenant("race");
    api.set_quota(&t, 3, 100, 1_000_000, 100_000).await;
    let token = api.user(&t);
    let api = std::sync::Arc::new(api);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let api = api.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            api.call(
                "POST",
                "/order",
                Some(&token),
                Some(&order_body(&format!("race-{i}"))),
            )
            .await
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::FORBIDDEN => {
                refused += 1;
                assert_eq!(a.code(), "QUOTA_EXCEEDED", "{:?}", a.body);
                let d = &a.body["details"];
                assert_eq!(d["max_pods"], 3);
                assert_eq!(d["current_pods"], 3);
                assert_eq!(d["requested_pods"], 1);
                assert_eq!(d["error_field"], "pods");
                assert_eq!(d["error_code"], "POD_LIMIT_EXCEEDED");
                assert!(
                    a.body["message"]
                        .as_str()
                        .unwrap()
                        .contains("Quota exceeded")
                );
            }
            s => panic!("unexpected {s}: {:?}", a.body),
        }
    }
    assert_eq!((accepted, refused), (3, 17));
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cloud_pods WHERE tenant_id = $1 AND deleted_at IS NULL",
    )
    .bind(&t)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(live, 3);
    let crs = api
        .pods()
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("cloudpods.migrahosting.com/tenant={t}")),
        )
        .await
        .unwrap();
    assert_eq!(crs.items.len(), 3);
}

#[tokio::test]
async fn repeated_order_with_the_same_idempotency_key_returns_the_same_pod() {
    let api = TestApi::start().await;
    let t = tenant("idem");
    let token = api.user(&t);
    let send = |key: &'static str, body: Value| {
        let token = token.clone();
        let api = &api;
        async move {
            let raw = serde_json::to_vec(&body).unwrap();
            api.raw(
                "POST",
                "/order",
                Some(&token),
                Some(raw),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
            )
            .await
        }
    };
    let first = send("order-42", order_body("same")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    // Concurrent replays too.
    let (a, b) = tokio::join!(
        send("order-42", order_body("same")),
        send("order-42", order_body("same"))
    );
    for again in [a, b] {
        assert_eq!(again.status, StatusCode::ACCEPTED);
        assert_eq!(again.body["podId"], first.body["podId"]);
        assert_eq!(again.body["jobId"], first.body["jobId"]);
        assert_eq!(again.body["replayed"], true);
    }
    // Same key, other body: refused.
    let other = send("order-42", order_body("different")).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_REUSED")
    );
    // The order id in the body works as the key.
    let mut with_id = order_body("by-order-id");
    with_id["orderId"] = json!("mp-1001");
    let o1 = api
        .call("POST", "/order", Some(&token), Some(&with_id))
        .await;
    let o2 = api
        .call("POST", "/order", Some(&token), Some(&with_id))
        .await;
    assert_eq!(o1.status, StatusCode::ACCEPTED);
    assert_eq!(o1.body["podId"], o2.body["podId"]);
    // Keys are per tenant: another tenant's identical key is a new order.
    let t2 = tenant("idem2");
    let theirs = api
        .raw(
            "POST",
            "/order",
            Some(&api.user(&t2)),
            Some(serde_json::to_vec(&order_body("same")).unwrap()),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "order-42"),
            ],
        )
        .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED);
    assert_ne!(theirs.body["podId"], first.body["podId"]);

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cloud_pods WHERE tenant_id = $1")
        .bind(&t)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "one pod per key");

    // A replay still answers after the blueprint was retired; a new order does not.
    sqlx::query("UPDATE cloud_pod_blueprints SET is_active = false")
        .execute(&api.pool)
        .await
        .unwrap();
    let replay = send("order-42", order_body("same")).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{:?}", replay.body);
    assert_eq!(replay.body["podId"], first.body["podId"]);
    let fresh = send("order-43", order_body("fresh")).await;
    assert_eq!(
        (fresh.status, fresh.code(), fresh.field()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "BLUEPRINT_INACTIVE",
            Some("blueprint")
        )
    );
}

#[tokio::test]
async fn quota_endpoints_defaults_admin_update_and_check() {
    let api = TestApi::start().await;
    let doc = openapi(&api).await;
    let t = tenant("quota");
    let token = api.user(&t);
    let a = api.call("GET", "/my-quota", Some(&token), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_conforms(&doc, "QuotaSummary", &a.body);
    assert_eq!(a.body["source"], "default");
    assert_eq!(
        a.body["limits"],
        json!({"maxPods": 2, "maxCpuCores": 4, "maxMemoryMb": 8192, "maxDiskGb": 200})
    );

    let a = api
        .call("GET", "/check-quota?planCode=business", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_conforms(&doc, "QuotaCheck", &a.body);
    assert_eq!(a.body["allowed"], true);
    assert_eq!(a.body["details"]["requested_cpu_cores"], 4);

    // Admin sets the quota twice (idempotent): one TenantQuota, one row.
    for _ in 0..2 {
        api.set_quota(&t, 1, 2, 2048, 40).await;
    }
    let tq: kube::Api<cloudpods::crd::TenantQuota> = kube::Api::all(api.kube.clone());
    let obj = tq.get(&t).await.unwrap();
    assert_eq!((obj.spec.max_pods, obj.spec.max_cpu_cores), (1, 2));
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cloud_pod_quotas WHERE tenant_id = $1")
            .bind(&t)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);

    let a = api
        .call(
            "GET",
            &format!("/tenants/{t}/quota"),
            Some(&api.admin()),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["source"], "tenantQuota");
    assert_eq!(a.body["limits"]["maxPods"], 1);

    // Now business (4 cores) does not fit; student does, then pods are exhausted.
    let a = api
        .call("GET", "/check-quota?planCode=business", Some(&token), None)
        .await;
    assert_eq!(a.body["allowed"], false);
    assert_eq!(a.body["details"]["error_field"], "cpu_cores");
    api.order(&t, "only").await;
    let a = api.call("GET", "/my-quota", Some(&token), None).await;
    assert_eq!(
        a.body["usage"],
        json!({"pods": 1, "cpuCores": 1, "memoryMb": 1024, "diskGb": 20})
    );
    assert_eq!(a.body["available"]["pods"], 0);
    let a = api
        .call("POST", "/order", Some(&token), Some(&order_body("second")))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "QUOTA_EXCEEDED")
    );
}

#[tokio::test]
async fn scale_checks_the_quota_delta_reserves_it_and_patches_the_cloudpod() {
    let api = TestApi::start().await;
    let t = tenant("scale");
    api.set_quota(&t, 2, 3, 4096, 100).await;
    let token = api.user(&t);
    let pod = api.order_id(&t, "grow").await;

    let a = api
        .call(
            "POST",
            &format!("/{pod}/scale"),
            Some(&token),
            Some(&json!({"cpuCores": 2, "diskGb": 30})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(
        a.body["resources"],
        json!({"cpuCores": 2, "memoryMb": 1024, "diskGb": 30})
    );
    let cr = api.pods().get(&pod).await.unwrap();
    let r = cr.spec.resources.unwrap();
    assert_eq!(
        (r.cpu_cores, r.memory_mb, r.disk_gb),
        (Some(2), Some(1024), Some(30))
    );
    let reserved: (Option<i32>, Option<i32>, Option<i32>) = sqlx::query_as(
        "SELECT reserved_cpu_cores, reserved_memory_mb, reserved_disk_gb FROM cloud_pods WHERE id = $1",
    )
    .bind(&pod)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(reserved, (Some(2), None, Some(30)));
    // The reservation counts: usage is 2 cores now.
    let q = api.call("GET", "/my-quota", Some(&token), None).await;
    assert_eq!(q.body["usage"]["cpuCores"], 2);

    // Growing past the limit: refused with the delta in the details.
    let a = api
        .call(
            "POST",
            &format!("/{pod}/scale"),
            Some(&token),
            Some(&json!({"cpuCores": 4})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "QUOTA_EXCEEDED"),
        "{:?}",
        a.body
    );
    assert_eq!(a.body["details"]["error_field"], "cpu_cores");
    assert_eq!(a.body["details"]["requested_cpu_cores"], 2);
    assert_eq!(a.body["details"]["requested_pods"], 0);
    // Disks never shrink; the same size again is a no-op.
    let a = api
        .call(
            "POST",
            &format!("/{pod}/scale"),
            Some(&token),
            Some(&json!({"diskGb": 20})),
        )
        .await;
    assert_eq!(
        (a.status, a.code(), a.field()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "DISK_SHRINK",
            Some("diskGb")
        )
    );
    let a = api
        .call(
            "POST",
            &format!("/{pod}/scale"),
            Some(&token),
            Some(&json!({"cpuCores": 2})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["jobId"], Value::Null);
    // Scaling down frees nothing until applied, but is allowed.
    let a = api
        .call(
            "POST",
            &format!("/{pod}/scale"),
            Some(&token),
            Some(&json!({"cpuCores": 1})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);

    // A keyed scale, then a newer one: replaying the first answers but writes nothing back.
    let keyed = |cores: i64, key: &'static str| {
        let token = token.clone();
        let path = format!("/{pod}/scale");
        let api = &api;
        async move {
            let body = serde_json::to_vec(&json!({ "cpuCores": cores })).unwrap();
            api.raw(
                "POST",
                &path,
                Some(&token),
                Some(body),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
            )
            .await
        }
    };
    let first = keyed(2, "scale-a").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    let newer = keyed(3, "scale-b").await;
    assert_eq!(newer.status, StatusCode::ACCEPTED, "{:?}", newer.body);
    let replay = keyed(2, "scale-a").await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{:?}", replay.body);
    assert_eq!(
        (
            replay.body["replayed"].clone(),
            replay.body["jobId"].clone()
        ),
        (json!(true), first.body["jobId"].clone())
    );
    let cr = api.pods().get(&pod).await.unwrap();
    assert_eq!(
        cr.spec.resources.unwrap().cpu_cores,
        Some(3),
        "the replay must not undo the newer scale"
    );
}

#[tokio::test]
async fn destroy_deletes_the_cloudpod_and_releases_an_unprovisioned_reservation() {
    let api = TestApi::start().await;
    let t = tenant("destroy");
    let token = api.user(&t);
    let pod = api.order_id(&t, "bye").await;
    let a = api
        .call("POST", &format!("/{pod}/destroy"), Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["status"], "deleting");
    let job = a.body["jobId"].as_i64().unwrap();
    let jtype: String = sqlx::query_scalar("SELECT type FROM cloud_pod_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(jtype, "destroy");
    // No operator runs here, so no finalizer holds the CloudPod: it is gone.
    assert!(api.pods().get_opt(&pod).await.unwrap().is_none());

    // A reservation whose CloudPod was never written (an order that died half-way).
    sqlx::query(
        "INSERT INTO cloud_pods (id, tenant_id, plan_code, blueprint_code, cpu_cores, memory_mb, \
         disk_gb, k8s_namespace, k8s_name) VALUES ('pod-orphan-1', $1, 'student', \
         'ubuntu-24-minimal', 1, 1024, 20, $2, 'pod-orphan-1')",
    )
    .bind(&t)
    .bind(&api.namespace)
    .execute(&api.pool)
    .await
    .unwrap();
    let a = api
        .call(
            "POST",
            "/pod-orphan-1/scale",
            Some(&token),
            Some(&json!({"cpuCores": 2})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "POD_NOT_READY")
    );
    let a = api
        .call("POST", "/pod-orphan-1/destroy", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["status"], "deleted");
    let again = api
        .call("POST", "/pod-orphan-1/destroy", Some(&token), None)
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["status"], "deleted");
    let q = api.call("GET", "/my-quota", Some(&token), None).await;
    assert_eq!(
        q.body["usage"]["pods"], 1,
        "only the first pod (awaiting the operator) still counts"
    );
}

#[tokio::test]
async fn backup_sets_a_new_request_token_on_an_active_pod_only() {
    let api = TestApi::start().await;
    let t = tenant("backup");
    let token = api.user(&t);
    let pod = api.order_id(&t, "db").await;
    let a = api
        .call("POST", &format!("/{pod}/backup"), Some(&token), None)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "POD_NOT_ACTIVE")
    );
    api.make_active(&pod, 555).await;
    let a = api.call("POST", "/555/backup", Some(&token), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let first = a.body["backupRequest"].as_str().unwrap().to_string();
    let cr = api.pods().get(&pod).await.unwrap();
    assert_eq!(cr.spec.backup_request.as_deref(), Some(first.as_str()));
    let b = api.call("POST", "/555/backup", Some(&token), None).await;
    let second = b.body["backupRequest"].as_str().unwrap().to_string();
    assert_ne!(first, second, "each call is one more backup");
    let cr = api.pods().get(&pod).await.unwrap();
    assert_eq!(cr.spec.backup_request.as_deref(), Some(second.as_str()));

    // A keyed backup replayed after a newer one answers but does not write its token back
    // (that would be one more backup).
    let keyed = |key: &'static str| {
        let token = token.clone();
        let api = &api;
        async move {
            api.raw(
                "POST",
                "/555/backup",
                Some(&token),
                None,
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let k1 = keyed("bk-1").await;
    assert_eq!(k1.status, StatusCode::ACCEPTED, "{:?}", k1.body);
    let newest = api.call("POST", "/555/backup", Some(&token), None).await;
    let newest = newest.body["backupRequest"].as_str().unwrap().to_string();
    let again = keyed("bk-1").await;
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["backupRequest"], k1.body["backupRequest"]);
    let cr = api.pods().get(&pod).await.unwrap();
    assert_eq!(cr.spec.backup_request.as_deref(), Some(newest.as_str()));
}

#[tokio::test]
async fn admin_stats_count_pods_and_queue() {
    let api = TestApi::start().await;
    let doc = openapi(&api).await;
    let t = tenant("stats");
    let p1 = api.order_id(&t, "s1").await;
    api.order(&t, "s2").await;
    api.make_active(&p1, 901).await;
    sqlx::query("INSERT INTO cloud_pod_queue (pod_id, action, status, processed_at) VALUES ($1, 'create', 'queued', NULL), ($1, 'sync', 'failed', now())")
        .bind(&p1)
        .execute(&api.pool)
        .await
        .unwrap();
    let a = api
        .call("GET", "/admin/stats", Some(&api.admin()), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_conforms(&doc, "AdminStats", &a.body);
    assert_eq!(a.body["pods"]["total"], 2);
    assert_eq!(
        a.body["pods"]["byStatus"],
        json!({"active": 1, "pending": 1})
    );
    assert_eq!(a.body["pods"]["byPlan"], json!({"student": 2}));
    assert_eq!(
        a.body["pods"]["byNode"],
        json!({"pve1": 1, "unassigned": 1})
    );
    assert_eq!(a.body["queue"]["depth"], 1);
    assert_eq!(a.body["failuresLastHour"]["queue"], 1);
    let a = api
        .call("GET", "/admin/stats", Some(&api.user(&t)), None)
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
}

#[tokio::test]
async fn every_documented_operation_is_served_and_guarded_as_documented() {
    let api = TestApi::start().await;
    let doc = openapi(&api).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut seen = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let concrete = path
                .trim_start_matches("/api/cloud-pods")
                .replace(
                    "{id}",
                    if path.contains("tenants") {
                        "acme"
                    } else {
                        "pod-none"
                    },
                )
                .replace("{code}", "starter");
            let a = api
                .call(&method.to_uppercase(), &concrete, None, None)
                .await;
            let public = op["security"].as_array().unwrap().is_empty();
            if public {
                assert_eq!(a.status, StatusCode::OK, "{method} {path}: {:?}", a.body);
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}: {:?}",
                    a.body
                );
                assert_eq!(a.code(), "UNAUTHORIZED");
                assert!(op["responses"]["401"].is_object());
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 16);
    // Not documented, not served.
    let a = api.call("GET", "/nope/deeper/still", None, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    let a = api.call("DELETE", "/plans", None, None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
}

#[tokio::test]
async fn request_ids_are_echoed_and_stamped_on_errors_and_probes_answer() {
    let api = TestApi::start().await;
    let a = api
        .raw(
            "GET",
            "/plans/nope",
            None,
            None,
            &[("x-request-id", "req-abc.123")],
        )
        .await;
    assert_eq!(a.headers["x-request-id"], "req-abc.123");
    assert_eq!(a.body["requestId"], "req-abc.123");
    // A hostile id is replaced, not echoed.
    let a = api
        .raw(
            "GET",
            "/plans/nope",
            None,
            None,
            &[("x-request-id", "evil\"id{}")],
        )
        .await;
    let id = a.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, "evil\"id{}");
    assert_eq!(a.body["requestId"], id);
    assert_eq!(
        api.call("GET", "//healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "//readyz", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_failing_database_is_a_503_without_detail() {
    let api = TestApi::start().await;
    let t = tenant("dbdown");
    let token = api.user(&t);
    api.pool.close().await;
    let a = api.call("GET", "/my-quota", Some(&token), None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
    );
    let text = a.body.to_string();
    for leak in ["postgres", "sqlx", "pool", "cp_test_", "closed"] {
        assert!(!text.to_lowercase().contains(leak), "{leak} leaked: {text}");
    }
    assert!(a.body["requestId"].is_string());
    assert_eq!(
        api.call("GET", "//readyz", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_errors_and_auth_failures() {
    let api = TestApi::start().await;
    let t = tenant("metrics");
    api.call("GET", "/plans", None, None).await;
    api.call("GET", "/plans", None, None).await;
    api.call("GET", "/my-quota", None, None).await;
    api.call("GET", "/my-quota", Some("garbage"), None).await;
    api.call("GET", "/pod-x", Some(&api.user(&t)), None).await;
    let a = api.raw("GET", "//metrics", None, None, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    // The body is not JSON; fetch it as text through the same client.
    let text = get_text(&api, "/metrics").await;
    for line in [
        "cloudpods_api_requests_total{method=\"GET\",route=\"/api/cloud-pods/plans\",status=\"200\"} 2",
        "cloudpods_api_requests_total{method=\"GET\",route=\"/api/cloud-pods/my-quota\",status=\"401\"} 2",
        "cloudpods_api_requests_total{method=\"GET\",route=\"/api/cloud-pods/{id}\",status=\"404\"} 1",
        "cloudpods_api_errors_total{code=\"UNAUTHORIZED\"} 2",
        "cloudpods_api_auth_failures_total{reason=\"missing_token\"} 1",
        "cloudpods_api_request_duration_seconds_count{method=\"GET\",route=\"/api/cloud-pods/plans\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line} in:\n{text}"
        );
    }
    // No tenant, pod id or token ever becomes a label.
    assert!(!text.contains(&t));
    assert!(!text.contains("pod-x"));
}

async fn get_text(api: &TestApi, path: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let resp = client
        .get(format!("{}{path}", api.base).parse().unwrap())
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_served_openapi_document_passes_an_independent_validator() {
    let validator = std::env::var("CLOUDPODS_OPENAPI_VALIDATOR").unwrap_or_else(|_| {
        panic!("CLOUDPODS_OPENAPI_VALIDATOR is not set: run the tests through scripts/test (it installs openapi-spec-validator)")
    });
    let api = TestApi::start().await;
    let doc = openapi(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(&path)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn stale_reservations_are_released_or_adopted_and_fresh_ones_left_alone() {
    let api = TestApi::start().await;
    let t = tenant("reaper");
    let insert = |id: &'static str, age: &'static str| {
        let pool = api.pool.clone();
        let t = t.clone();
        let ns = api.namespace.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO cloud_pods (id, tenant_id, plan_code, blueprint_code, cpu_cores, \
                 memory_mb, disk_gb, k8s_namespace, k8s_name, created_at) VALUES ($1, $2, \
                 'student', 'ubuntu-24-minimal', 1, 1024, 20, $3, $1, now() - interval '{age}')"
            )))
            .bind(id)
            .bind(&t)
            .bind(&ns)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    insert("pod-died-before-write", "10 minutes").await;
    insert("pod-write-landed", "10 minutes").await;
    insert("pod-in-flight", "1 second").await;
    // The second order's CloudPod was written, but its uid never recorded.
    let cr: cloudpods::crd::CloudPod = serde_json::from_value(json!({
        "apiVersion": "cloudpods.migrahosting.com/v1alpha1", "kind": "CloudPod",
        "metadata": { "name": "pod-write-landed", "namespace": api.namespace },
        "spec": { "tenantId": t, "planCode": "student", "blueprint": "ubuntu-24-minimal", "hostname": "landed" },
    }))
    .unwrap();
    let created = api.pods().create(&Default::default(), &cr).await.unwrap();

    let report = cloudpods::api::reaper::sweep(&api.state, std::time::Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!((report.adopted, report.released, report.skipped), (1, 1, 0));
    let rows: Vec<(String, String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT id, status, k8s_uid FROM cloud_pods WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(&t)
    .fetch_all(&api.pool)
    .await
    .unwrap();
    let uid = created
        .metadata
        .uid
        .as_deref()
        .map(|u| uuid::Uuid::parse_str(u).unwrap());
    assert_eq!(
        rows,
        vec![
            ("pod-died-before-write".into(), "deleted".into(), None),
            ("pod-in-flight".into(), "pending".into(), None),
            ("pod-write-landed".into(), "pending".into(), uid),
        ]
    );
    // The released one no longer counts; a second sweep finds nothing to do.
    let q = api
        .call("GET", "/my-quota", Some(&api.user(&t)), None)
        .await;
    assert_eq!(q.body["usage"]["pods"], 2);
    let again = cloudpods::api::reaper::sweep(&api.state, std::time::Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!((again.adopted, again.released), (0, 0));
    let text = get_text(&api, "/metrics").await;
    assert!(
        text.contains("cloudpods_api_stale_reservations_total{outcome=\"released\"} 1"),
        "{text}"
    );
}

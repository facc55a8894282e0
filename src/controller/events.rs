//! Kubernetes Events, best effort. A cluster (or test server) without the events API, or a
//! rejected event, never fails a reconcile: the first 404 turns publishing off with one log
//! line, other failures are logged at debug.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The controllers' event publisher.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    disabled: Arc<AtomicBool>,
}

impl Events {
    /// A publisher reporting as `cloudpods-controller` from `instance`.
    pub fn new(client: kube::Client, instance: String) -> Self {
        Events {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: super::FIELD_MANAGER.into(),
                    instance: Some(instance),
                },
            ),
            disabled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True while events are being published.
    pub fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
    }

    /// Publishes one event about `regarding`; returns whether it was written.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: &str,
    ) -> bool {
        if !self.enabled() {
            return false;
        }
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note.chars().take(1024).collect()),
            action: action.to_string(),
            secondary: None,
        };
        match self.recorder.publish(&ev, regarding).await {
            Ok(()) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !self.disabled.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "this cluster has no events.k8s.io API; Kubernetes Events are off (status and logs carry the same information)"
                    );
                }
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, reason, "publishing an event failed");
                false
            }
        }
    }
}

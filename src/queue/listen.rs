//! LISTEN on [`CHANNEL_DONE`]: the pods whose queue items just finished, with the connection
//! kept up by the listener itself.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::CHANNEL_DONE;

/// Pause before retrying after a failed connect or LISTEN.
const RETRY: Duration = Duration::from_secs(2);

/// Notifications of finished queue items; [`DoneListener::next`] yields their pod ids.
///
/// Connects lazily and reconnects after errors (pausing when the database refuses), so
/// `next` only returns with a notification. Notifications sent while disconnected are lost:
/// callers must have another way to notice a finished item (e.g. a periodic requeue).
pub struct DoneListener {
    pool: PgPool,
    listener: Option<PgListener>,
}

impl DoneListener {
    /// A listener whose connection is taken from `pool` on the first [`DoneListener::next`].
    pub fn new(pool: PgPool) -> Self {
        DoneListener {
            pool,
            listener: None,
        }
    }

    /// The pod id of the next finished queue item. Cancel-safe.
    pub async fn next(&mut self) -> String {
        loop {
            let listener = match &mut self.listener {
                Some(l) => l,
                None => match connect(&self.pool).await {
                    Ok(l) => self.listener.insert(l),
                    Err(e) => {
                        tracing::warn!(error = %e, channel = CHANNEL_DONE,
                            "cannot listen for finished jobs; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            match listener.recv().await {
                Ok(n) => return n.payload().to_string(),
                Err(e) => {
                    tracing::warn!(error = %e, "finished-job listener lost; reconnecting");
                    self.listener = None;
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL_DONE).await?;
    Ok(listener)
}

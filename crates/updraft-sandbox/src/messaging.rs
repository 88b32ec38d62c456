//! `updraft:platform/messaging` for guests: publishing to the tenant's
//! queues and topics. The sandbox checks the manifest's `publishes` and
//! hands the message to a [`Publisher`], which the scheduler implements.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use wasmtime::component::{HasSelf, Linker};

use crate::capability::Backends;
use crate::host::{Host, refused};
use updraft_core::Manifest;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/messaging",
        world: "updraft:platform/messaging-imports",
        imports: { default: async | trappable },
    });
}

use bindings::updraft::platform::messaging;

/// Why the platform did not take a message. The scheduler's message in
/// `Other` is one a guest may read (it names no internals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("no such queue or topic")]
    NotFound,
    #[error("the message is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    Other(String),
}

impl updraft_core::Classify for PublishError {
    fn kind(&self) -> updraft_core::ErrorKind {
        use updraft_core::ErrorKind;
        match self {
            PublishError::NotFound => ErrorKind::NotFound,
            PublishError::TooLarge(_) => ErrorKind::TooLarge,
            PublishError::Other(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PublishError::NotFound => "channel_not_found",
            PublishError::TooLarge(_) => "payload_too_large",
            PublishError::Other(_) => "publish_failed",
        }
    }
}

/// Publishes for guests: implemented by the scheduler.
pub trait Publisher: Send + Sync + 'static {
    fn publish(
        &self,
        owner: String,
        channel: String,
        data: Bytes,
        content_type: Option<String>,
        trace: Option<updraft_core::trace::TraceParent>,
    ) -> BoxFuture<'static, Result<Vec<String>, PublishError>>;
}

/// Where a function may publish: the channels its manifest lists.
#[derive(Clone)]
pub struct PublishGrant {
    pub publisher: Arc<dyn Publisher>,
    pub owner: String,
    pub channels: Vec<String>,
}

/// The queues and topics of `publishes`, if the manifest lists any.
pub(crate) fn grant(
    tenant: &str,
    manifest: &Manifest,
    backends: &Backends,
) -> Option<PublishGrant> {
    let channels = &manifest.publishes;
    (!channels.is_empty()).then(|| PublishGrant {
        publisher: backends.publisher.clone(),
        owner: tenant.to_string(),
        channels: channels.clone(),
    })
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    messaging::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)
}

impl messaging::Host for Host {
    async fn publish(
        &mut self,
        channel: String,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> wasmtime::Result<Result<Vec<String>, messaging::Error>> {
        let Some(grant) = self
            .grants
            .publishes
            .as_ref()
            .filter(|g| g.channels.contains(&channel))
        else {
            let listed = self
                .grants
                .publishes
                .as_ref()
                .map(|g| g.channels.as_slice());
            let note = refused(&format!("publish to {channel:?}"), "publishes", listed);
            self.note(note);
            return Ok(Err(messaging::Error::AccessDenied(channel)));
        };
        let published = grant.publisher.publish(
            grant.owner.clone(),
            channel.clone(),
            data.into(),
            content_type,
            self.trace,
        );
        Ok(match published.await {
            Ok(ids) => Ok(ids),
            Err(PublishError::NotFound) => Err(messaging::Error::NotFound(channel)),
            Err(PublishError::TooLarge(max)) => Err(messaging::Error::TooLarge(max)),
            Err(PublishError::Other(message)) => Err(messaging::Error::Other(message)),
        })
    }
}

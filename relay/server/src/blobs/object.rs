//! The S3 backend, through `object_store`: a complete blob's staging file is streamed to
//! the object `blobs/<hex id>` (a single put below [`PART`], else a multipart upload of
//! [`PART`]-sized parts, at most [`CONCURRENCY`] in flight, so memory stays bounded), and
//! downloads stream the object's range. The secret access key goes to the client builder
//! and nowhere else: errors are logged by kind only.

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::body::Body;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use sotto_proto::ErrorCode;

use super::hex_id;
use crate::config::Blobs as BlobConfig;
use crate::error::AppError;
use crate::metrics::{Metrics, inc};

/// The part size of multipart uploads (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;
/// Parts uploaded at once.
const CONCURRENCY: usize = 2;

/// The object store holding complete blobs.
pub(super) struct Objects {
    store: Arc<dyn ObjectStore>,
}

/// Why the S3 backend could not be set up (its text names no secret).
#[derive(Debug, thiserror::Error)]
#[error("S3 configuration: {0}")]
pub(super) struct SetupError(&'static str);

fn failed(what: &'static str, e: &object_store::Error) -> AppError {
    // The error's Display can carry the endpoint's answer; its kind is enough here.
    let kind = match e {
        object_store::Error::NotFound { .. } => "not found",
        object_store::Error::Precondition { .. } => "precondition",
        object_store::Error::NotModified { .. } => "not modified",
        object_store::Error::PermissionDenied { .. } => "permission denied",
        object_store::Error::Unauthenticated { .. } => "unauthenticated",
        _ => "request failed",
    };
    tracing::error!(what, kind, "S3 blob backend");
    AppError(ErrorCode::INTERNAL)
}

fn path_of(id: &[u8; 32]) -> Path {
    Path::from(format!("blobs/{}", hex_id(id)))
}

impl Objects {
    /// The client for the `[blobs]` settings.
    pub(super) fn new(config: &BlobConfig) -> Result<Self, SetupError> {
        let bucket = config.bucket.as_deref().ok_or(SetupError("no bucket"))?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(config.region.clone())
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            b = b.with_endpoint(endpoint.clone());
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b
                .with_access_key_id(id.clone())
                .with_secret_access_key(secret.0.clone());
        }
        let store = b.build().map_err(|_| SetupError("the S3 client does not build"))?;
        Ok(Self { store: Arc::new(store) })
    }

    /// Streams the staging file `file` to the blob's object; returns once the store
    /// confirmed it.
    pub(super) async fn upload(&self, id: &[u8; 32], file: &FsPath) -> Result<(), AppError> {
        use tokio::io::AsyncWriteExt;
        let mut src = tokio::fs::File::open(file).await.map_err(|e| super::io_error(&e))?;
        let mut dst = BufWriter::with_capacity(self.store.clone(), path_of(id), PART).with_max_concurrency(CONCURRENCY);
        if let Err(e) = tokio::io::copy(&mut src, &mut dst).await {
            let _ = dst.abort().await;
            return Err(super::io_error(&e));
        }
        dst.shutdown().await.map_err(|e| super::io_error(&e))
    }

    /// Bytes `first..=last` of the blob's object, streamed.
    pub(super) async fn stream(
        &self,
        id: &[u8; 32],
        first: u64,
        last: u64,
        slot: super::DownloadSlot,
        metrics: Arc<Metrics>,
    ) -> Result<Body, AppError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(first..last + 1)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&path_of(id), options)
            .await
            .map_err(|e| failed("get", &e))?;
        let stream = got.into_stream().map(move |chunk| {
            slot.check()?;
            match chunk {
                Ok(bytes) => {
                    inc(&metrics.blob_bytes_served_total, bytes.len() as u64);
                    Ok(bytes)
                }
                Err(e) => Err(std::io::Error::other(failed("get stream", &e).0.name())),
            }
        });
        Ok(Body::from_stream(stream))
    }

    /// Deletes the blob's object; one that is not there is fine.
    pub(super) async fn delete(&self, id: &[u8; 32]) -> Result<(), AppError> {
        match self.store.delete(&path_of(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed("delete", &e)),
        }
    }
}

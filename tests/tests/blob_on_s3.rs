//! The blob strategy against an S3-compatible object store (moto_server in the test lane): the
//! whole replicator suite, and a blob large enough for a multipart upload.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use replicable_core::prelude::*;
use replicable_core::testing::Harness;
use replicable_strategies::BlobStrategy;
use replicable_strategies::blob::object_sha256;
use replicable_tests::s3_lane;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Asset {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

fn asset(id: i64) -> Asset {
    Asset {
        id,
        key: format!("assets/{id}/original.png"),
    }
}

/// A fresh key prefix of the lane's bucket.
fn bucket_area() -> Option<impl Fn(&str) -> Arc<dyn ObjectStore>> {
    let (endpoint, bucket) = s3_lane()?;
    let s3 = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("replicable")
            .with_secret_access_key("replicable")
            .build()
            .expect("an S3 client"),
    );
    let run = format!("run-{}-{:x}", std::process::id(), fastrand());
    Some(move |site: &str| -> Arc<dyn ObjectStore> {
        Arc::new(PrefixStore::new(s3.clone(), format!("{run}/{site}")))
    })
}

fn fastrand() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(40)
}

fn s3_sites(factory: fn(i64) -> Asset) -> Option<Harness<Asset>> {
    let area = bucket_area()?;
    let primary = Site::primary("primary")
        .blob_store(area("primary"))
        .in_memory()
        .build()
        .expect("a site");
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .blob_store(area("secondary"))
    .in_memory()
    .build()
    .expect("a site");
    Some(Harness::with_sites(
        primary,
        secondary,
        move |builder| {
            builder
                .blob_store(area(&format!("scoped-{:x}", fastrand())))
                .in_memory()
                .build()
                .expect("a site")
        },
        factory,
    ))
}

replicable_core::replicator_test_suite!(on_s3: Asset, asset, harness = s3_sites);

#[test]
fn a_multipart_blob_replicates_through_s3() {
    replicable_core::testing::block_on(async {
        let Some(h) = s3_sites(asset) else { return };
        let record = asset(9);
        let path = Path::from(record.key.as_str());
        let mut writer =
            WriteMultipart::new(h.primary.blob_store().put_multipart(&path).await.unwrap());
        for i in 0..12u8 {
            writer.put(vec![i ^ 0x5a; 1024 * 1024].into());
        }
        writer.finish().await.unwrap();
        record
            .replicator(&h.primary)
            .publish_created_event()
            .await
            .unwrap();
        record.replicator(&h.primary).verify().await.unwrap();
        let outcome = record.replicator(&h.secondary).sync().await.unwrap();
        assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
        assert_eq!(
            object_sha256(&**h.secondary.blob_store(), &path)
                .await
                .unwrap(),
            object_sha256(&**h.primary.blob_store(), &path)
                .await
                .unwrap()
        );
        assert_eq!(
            h.secondary.blob_store().head(&path).await.unwrap().size,
            12 * 1024 * 1024
        );
        let verified = record.replicator(&h.secondary).verify().await.unwrap();
        assert!(
            matches!(verified, VerifyOutcome::Succeeded { .. }),
            "{verified:?}"
        );
    });
}

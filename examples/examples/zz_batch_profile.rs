use replicable_core::Site;
use replicable_core::storage::Backend;
use replicable_core::storage::sql::SqlStore;
use replicable_examples::PackageFile;
use std::sync::Arc;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .map_or(300_000, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::args()
        .nth(2)
        .unwrap_or_else(|| format!("sqlite://{}/p.db", dir.path().display()));
    let store = SqlStore::open(&url).await.unwrap();
    let site = Site::primary("p")
        .database(store as Arc<dyn Backend>)
        .build()
        .unwrap();
    let records: Vec<_> = (1..=n)
        .map(|id| PackageFile::new(id, &format!("package-{id}.tgz")))
        .collect();
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        site.publish_created_events(chunk).await.unwrap();
    }
    let e = t.elapsed();
    println!("{n} in {e:?}: {:.0}/s", n as f64 / e.as_secs_f64());
}

use futures::StreamExt;
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
        .map_or(5_000, |a| a.parse().unwrap());
    let conc: usize = std::env::args().nth(2).map_or(16, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/p.db", dir.path().display());
    let store = SqlStore::open(&url).await.unwrap();
    let site = Site::primary("p")
        .database(store as Arc<dyn Backend>)
        .build()
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(1..=n)
        .map(|id| {
            let site = &site;
            async move {
                PackageFile::new(id, &format!("package-{id}.tgz"))
                    .replicator(site)
                    .publish_created_event()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(conc)
        .collect::<Vec<_>>()
        .await;
    let e = t.elapsed();
    println!("{n} x{conc} in {e:?}: {:.0}/s", n as f64 / e.as_secs_f64());
}

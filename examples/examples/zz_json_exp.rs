use sqlx::any::AnyPoolOptions;
use sqlx::{AssertSqlSafe, Executor};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db?mode=rwc", dir.path().display());
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(|c, _| {
            Box::pin(async move {
                c.execute("PRAGMA journal_mode = WAL").await?;
                c.execute("PRAGMA synchronous = FULL").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    for t in ["a", "b"] {
        pool.execute(AssertSqlSafe(format!("CREATE TABLE ev_{t} (id INTEGER PRIMARY KEY AUTOINCREMENT, replicable_name TEXT NOT NULL, event_name TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL)"))).await.unwrap();
        pool.execute(AssertSqlSafe(format!("CREATE TABLE rec_{t} (id BIGINT PRIMARY KEY, generation BIGINT NOT NULL, body TEXT NOT NULL)"))).await.unwrap();
    }
    let payload = |i: i64| {
        serde_json::json!({"model_id": i, "resource": {"type":"blob","key": format!("package-{i}.tgz")}, "generation": 1, "record": {"id": i, "file_path": format!("package-{i}.tgz"), "file_name": format!("package-{i}.tgz")}}).to_string()
    };
    let body = |i: i64| {
        serde_json::json!({"id": i, "file_path": format!("package-{i}.tgz"), "file_name": format!("package-{i}.tgz")}).to_string()
    };
    let t = Instant::now();
    let mut total = 0;
    for b in 0..100i64 {
        let rows: Vec<_> = (b * 1000..(b + 1) * 1000)
            .map(|i| ("package_file", "created", payload(i)))
            .collect();
        total += serde_json::to_string(&rows).unwrap().len();
    }
    println!("prep events: {:?} {total}", t.elapsed());
    let sync = std::env::args().nth(1).unwrap_or("FULL".into());
    pool.execute(AssertSqlSafe(format!("PRAGMA synchronous = {sync}")))
        .await
        .unwrap();
    for round in 0..2 {
        // a: nested arrays
        let t = Instant::now();
        for b in 0..100i64 {
            let mut tx = pool.begin().await.unwrap();
            let rows: Vec<_> = (b * 1000..(b + 1) * 1000)
                .map(|i| ("package_file", "created", payload(i)))
                .collect();
            sqlx::query("INSERT INTO ev_a (replicable_name, event_name, payload, created_at) SELECT value ->> 0, value ->> 1, value ->> 2, $2 FROM json_each($1) ORDER BY key").bind(serde_json::to_string(&rows).unwrap()).bind(1i64).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        println!("{round} events nested: {:?}", t.elapsed());
        let t = Instant::now();
        for b in 0..100i64 {
            let mut tx = pool.begin().await.unwrap();
            let rows: Vec<_> = (b * 1000..(b + 1) * 1000).map(payload).collect();
            sqlx::query("INSERT INTO ev_b (replicable_name, event_name, payload, created_at) SELECT $2, $3, value, $4 FROM json_each($1) ORDER BY key").bind(serde_json::to_string(&rows).unwrap()).bind("package_file").bind("created").bind(1i64).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        println!("{round} events strings: {:?}", t.elapsed());
        let t = Instant::now();
        for b in 0..100i64 {
            let mut tx = pool.begin().await.unwrap();
            let rows: Vec<_> = (b * 1000..(b + 1) * 1000).map(|i| (i, body(i))).collect();
            sqlx::query("INSERT INTO rec_a AS r (id, generation, body) SELECT CAST(value ->> 0 AS BIGINT), 1, value ->> 1 FROM json_each($1) WHERE true ON CONFLICT (id) DO UPDATE SET generation = r.generation + 1, body = excluded.body RETURNING id, generation").bind(serde_json::to_string(&rows).unwrap()).fetch_all(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        println!("{round} records nested: {:?}", t.elapsed());
        let t = Instant::now();
        for b in 0..100i64 {
            let mut tx = pool.begin().await.unwrap();
            let rows: serde_json::Map<String, serde_json::Value> = (b * 1000..(b + 1) * 1000)
                .map(|i| (i.to_string(), serde_json::Value::String(body(i))))
                .collect();
            sqlx::query("INSERT INTO rec_b AS r (id, generation, body) SELECT CAST(key AS BIGINT), 1, value FROM json_each($1) WHERE true ON CONFLICT (id) DO UPDATE SET generation = r.generation + 1, body = excluded.body RETURNING id, generation").bind(serde_json::to_string(&rows).unwrap()).fetch_all(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        println!("{round} records object: {:?}", t.elapsed());
        for t in ["a", "b"] {
            pool.execute(AssertSqlSafe(format!("DELETE FROM rec_{t}")))
                .await
                .unwrap();
        }
    }
}

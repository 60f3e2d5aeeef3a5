//! swap and start against real clusters.

mod common;

use common::{TestDbs, Workdir};

#[test]
fn start_swaps_with_postgis_staying_in_public() {
    let dbs = TestDbs::new("swap_postgis");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    dbs.src.psql(&common::sql_bodies_for(dbs.src.server_major(),
        "CREATE TABLE places (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), name text, geom geometry(Point, 4326));
         CREATE INDEX places_geom ON places USING gist (geom);
         INSERT INTO places (name, geom) SELECT 'p' || g, ST_SetSRID(ST_MakePoint(g, g), 4326) FROM generate_series(1, 100) g;
         CREATE FUNCTION place_count() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM places; END;",
    ));
    dbs.dst.psql(
        "CREATE TABLE places (id int PRIMARY KEY, name text, geom geometry(Point, 4326));
         INSERT INTO places VALUES (1, 'old', ST_SetSRID(ST_MakePoint(0, 0), 4326));",
    );
    let wd = Workdir::new();
    let out = wd.run_ok(&[
        "start",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let backup = v["swap"]["backup_schema"].as_str().unwrap().to_string();
    assert!(backup.starts_with("backup_"));
    assert!(v["swap"]["lock_held_ms"].as_u64().is_some());
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM places"),
        "100"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT ST_AsText(geom) FROM places WHERE name = 'p7'"),
        "POINT(7 7)"
    );
    assert_eq!(dbs.dst.query_one_string("SELECT place_count()"), "100");
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'postgis'"
        ),
        "public"
    );
    assert_eq!(
        dbs.dst
            .query_one_string(&format!("SELECT name FROM {backup}.places")),
        "old"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pgshift.backups"),
        "1"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "1"
    );
    // The state file is cleared after a successful swap.
    let left: Vec<_> = std::fs::read_dir(wd.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().ends_with(".json")),
        "{left:?}"
    );
}

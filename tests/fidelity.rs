//! prepare's fidelity: the shadow's DDL equals the source's, every table's
//! contents are identical, the source is untouched (and only ever ACCESS SHARE
//! locked), the destination's public is untouched, application roles keep
//! access, and a failure in any phase leaves nothing behind.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{
    PREPARE_PHASES, TestDb, TestDbs, Workdir, assert_same_ddl, assert_success, create_role,
    normalised_dump,
};

const RICH: &str = include_str!("fixtures/rich_schema.sql");

/// Tables and materialized views of a schema (not extension members).
fn relations(db: &TestDb, schema: &str) -> Vec<String> {
    db.psql(&format!(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'm') AND c.relispopulated
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
          ORDER BY 1"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

fn content_hash(db: &TestDb, schema: &str, table: &str) -> String {
    let q = format!("\"{}\".\"{}\"", schema, table.replace('"', "\"\""));
    db.psql(&format!(
        "SET extra_float_digits = 3; SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM ONLY {q} t"
    ))
}

fn data_fingerprint(db: &TestDb, schema: &str) -> Vec<(String, String)> {
    relations(db, schema)
        .into_iter()
        .map(|t| {
            let h = content_hash(db, schema, &t);
            (t, h)
        })
        .collect()
}

/// `start` from the pair's source into its destination, which must succeed.
fn start(dbs: &TestDbs) {
    Workdir::new().run_ok(&[
        "start",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
}
#[test]
fn prepare_reproduces_a_rich_schema_exactly() {
    let dbs = TestDbs::new("fidelity");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    dbs.src
        .psql(&common::sql_bodies_for(dbs.src.server_major(), RICH));
    // The destination serves an older version, with an application role.
    let role = format!("app_ro_{}", std::process::id());
    dbs.dst.psql(&format!(
        "CREATE TABLE users (id serial PRIMARY KEY, email text);
         INSERT INTO users (email) VALUES ('old@example.com');
         CREATE TABLE legacy (x int); INSERT INTO legacy VALUES (42);
         {}
         GRANT SELECT ON users TO {role};",
        create_role(&role, "LOGIN")
    ));
    let src_ddl_before = normalised_dump(&dbs.src, "public");
    let src_data_before = data_fingerprint(&dbs.src, "public");
    let dst_ddl_before = normalised_dump(&dbs.dst, "public");
    let dst_data_before = data_fingerprint(&dbs.dst, "public");

    // Sample the locks pgshift takes on the source while prepare runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let info = dbs.src.server().clone();
        let dbname = dbs.src.name().to_string();
        std::thread::spawn(move || {
            let mut modes = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let out = info.psql(
                    &dbname,
                    "SELECT DISTINCT l.mode FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                       JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE d.datname = current_database() AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
                        AND a.backend_type = 'client backend'",
                );
                modes.extend(out.lines().map(str::to_string));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            modes
        })
    };
    let wd = Workdir::new();
    let out = wd.prepare(&dbs, &[]);
    stop.store(true, Ordering::Relaxed);
    let modes = sampler.join().unwrap();
    assert!(
        out.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The shadow's DDL equals the source's.
    assert_same_ddl(&dbs.src, &dbs.dst);
    // Every table's (and materialized view's) contents are identical.
    assert_eq!(data_fingerprint(&dbs.dst, "shadow"), src_data_before);
    // The source is unchanged and held no lock stronger than ACCESS SHARE
    // (client sessions only: autovacuum may analyze the fresh tables).
    assert_eq!(normalised_dump(&dbs.src, "public"), src_ddl_before);
    assert_eq!(data_fingerprint(&dbs.src, "public"), src_data_before);
    assert!(
        modes.iter().all(|m| m == "AccessShareLock"),
        "locks seen on the source: {modes:?}"
    );
    // The destination's public is unchanged; the extensions are still in public.
    assert_eq!(normalised_dump(&dbs.dst, "public"), dst_ddl_before);
    assert_eq!(data_fingerprint(&dbs.dst, "public"), dst_data_before);
    assert_eq!(
        dbs.dst.psql("SELECT string_agg(extname || ':' || extnamespace::regnamespace::text, ',' ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql'"),
        "postgis:public,uuid-ossp:public"
    );
    // An application role granted SELECT on a destination table can read the shadow's.
    assert_eq!(
        dbs.dst.psql(&format!(
            "SET ROLE {role}; SELECT count(*) FROM shadow.users"
        )),
        "500"
    );
    // Statistics exist (ANALYZE ran) and sequences match.
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) > 0 FROM pg_stats WHERE schemaname = 'shadow' AND tablename = 'orders'"
        ),
        "t"
    );
    for seq in [
        "standalone_seq",
        "users_id_seq",
        "orders_id_seq",
        "\"MixedCase Table_Id_seq\"",
    ] {
        assert_eq!(
            dbs.dst.psql(&format!(
                "SELECT last_value || ':' || is_called FROM shadow.{seq}"
            )),
            dbs.src.psql(&format!(
                "SELECT last_value || ':' || is_called FROM public.{seq}"
            )),
            "sequence {seq}"
        );
    }
}

/// A materialized view computed by a function that names its table without
/// a schema is refreshed against the shadow's rows, not against the
/// destination's live table of the same name. (From PostgreSQL 17 on,
/// REFRESH runs with a search_path of pg_catalog alone, and such a function
/// fails there as it does under pg_restore: checked on older servers.)
#[test]
fn materialized_views_are_refreshed_from_the_shadow() {
    let dbs = TestDbs::new("matview_path");
    if dbs.dst.server_major() >= 17 {
        println!("skipped: REFRESH sets its own search_path from PostgreSQL 17 on");
        return;
    }
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY); INSERT INTO users VALUES (1), (2);
         CREATE FUNCTION n_users() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM users';
         CREATE MATERIALIZED VIEW user_count AS SELECT n_users() AS n;",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY); INSERT INTO users SELECT generate_series(1, 1000);",
    );
    start(&dbs);
    assert_eq!(dbs.dst.psql("SELECT n FROM public.user_count"), "2");
}

/// A function a materialized view calls that names an extension's operator
/// or function without a schema (pgvector's `embedding <=> q`, PostGIS's
/// `ST_Distance`) finds it during the refresh, whether the extension lives in
/// public or in a schema of its own, as it does on the source; and where the
/// database's search path puts the extensions' schema first, an
/// application's function of the same name (`public.nlevel`) does not take
/// the extension's place; a schema the migration does not move that the
/// destination's path puts first (`extra`) lends no table of the same name.
#[test]
fn a_materialized_view_over_an_extensions_operators_is_refreshed() {
    let dbs = TestDbs::new("matview_ext");
    if dbs.dst.server_major() >= 17 {
        println!("skipped: REFRESH sets its own search_path from PostgreSQL 17 on");
        return;
    }
    for db in [&dbs.src, &dbs.dst] {
        db.psql(
            "CREATE EXTENSION hstore; CREATE SCHEMA extensions; CREATE EXTENSION ltree SCHEMA extensions;
             DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = extensions, public', current_database()); END $$;",
        );
    }
    dbs.src.psql(
        "SET search_path = extensions, public;
         CREATE FUNCTION public.nlevel(ltree) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 0';
         CREATE TABLE public.items (id int PRIMARY KEY, attrs hstore, path ltree);
         INSERT INTO items VALUES (1, 'vip => 1', 'a.b'), (2, 'x => 2', 'a.c'), (3, 'vip => 3', 'b');
         CREATE FUNCTION public.vips_under(p ltree) RETURNS bigint LANGUAGE sql STABLE
           AS 'SELECT count(*) FROM items WHERE attrs ? ''vip'' AND path <@ p AND nlevel(path) > 0';
         CREATE MATERIALIZED VIEW public.vip_count AS SELECT vips_under('a') AS n;",
    );
    dbs.dst.psql(
        "CREATE TABLE public.items (id int PRIMARY KEY); INSERT INTO public.items SELECT generate_series(1, 10);
         CREATE SCHEMA extra;
         CREATE TABLE extra.items (id int PRIMARY KEY, attrs public.hstore, path extensions.ltree);
         INSERT INTO extra.items SELECT g, 'vip => 1', 'a.b' FROM generate_series(1, 50) g;
         DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = extra, extensions, public', current_database()); END $$;",
    );
    start(&dbs);
    assert_eq!(dbs.dst.psql("SELECT n FROM public.vip_count"), "1");
}

/// An extension whose version differs: the plan says the shadow uses the
/// destination's copy, and, when the destination's is the older one, how to
/// update it; prepare then works.
#[test]
fn an_extension_version_behind_the_sources_is_named_with_its_update() {
    let dbs = TestDbs::new("ext_version");
    dbs.src.psql(
        "CREATE EXTENSION hstore; CREATE TABLE items (id int PRIMARY KEY, attrs hstore);
         INSERT INTO items VALUES (1, 'a => 1');",
    );
    dbs.dst.psql("CREATE EXTENSION hstore VERSION '1.4'");
    let source_version = dbs
        .src
        .psql("SELECT extversion FROM pg_extension WHERE extname = 'hstore'");
    assert_ne!(source_version, "1.4");
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let plan = || {
        let out = wd.run(&["prepare", "--dry-run", "--source", &src, "--dest", &dst]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let said = plan();
    assert!(
        said.contains(&format!(
            "extension hstore is version {source_version} on the source and 1.4 on the destination"
        )) && said.contains(&format!(
            "ALTER EXTENSION hstore UPDATE TO '{source_version}' on the destination first"
        )),
        "{said}"
    );
    dbs.dst.psql(&format!(
        "ALTER EXTENSION hstore UPDATE TO '{source_version}'"
    ));
    wd.run_ok(&["start", "--source", &src, "--dest", &dst]);
    assert_eq!(dbs.dst.psql("SELECT attrs -> 'a' FROM items"), "1");
    // The other way round, the destination's newer copy serves the shadow.
    dbs.src
        .psql("DROP TABLE items; DROP EXTENSION hstore; CREATE EXTENSION hstore VERSION '1.4'");
    let said = plan();
    assert!(
        said.contains(&format!(
            "extension hstore is version 1.4 on the source and {source_version} on the destination: the shadow uses the destination's (newer)"
        )),
        "{said}"
    );
}

/// A string constant in a function body that spells a migrated table's name
/// but is data (an audit trail's table names) keeps its value while prepare
/// computes with the function: CHECK constraints pass the source's rows, and
/// stored generated columns, expression indexes and materialized views hold
/// what the source's do.
#[test]
fn a_name_spelled_as_data_in_a_function_body_keeps_its_value() {
    let dbs = TestDbs::new("body_data");
    dbs.src.psql(
        "CREATE TABLE accounts (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE FUNCTION table_for(kind text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
           BEGIN RETURN CASE kind WHEN 'account' THEN 'public.accounts' WHEN 'order' THEN 'public.orders' END; END $f$;
         CREATE FUNCTION is_audited(t text) RETURNS bool LANGUAGE plpgsql IMMUTABLE AS $f$
           BEGIN RETURN t IN ('public.orders', 'public.accounts'); END $f$;
         CREATE TABLE audit_log (id int, kind text, tbl text GENERATED ALWAYS AS (table_for(kind)) STORED,
                                 CHECK (is_audited(table_for(kind))));
         CREATE INDEX audit_log_tbl ON audit_log (table_for(kind));
         INSERT INTO audit_log SELECT g, CASE WHEN g % 2 = 0 THEN 'account' ELSE 'order' END
           FROM generate_series(1, 200) g;
         CREATE MATERIALIZED VIEW mv AS SELECT table_for('account') AS t;",
    );
    start(&dbs);
    for sql in [
        "SELECT tbl FROM audit_log WHERE id = 2",
        "SELECT t FROM mv",
        "SET enable_seqscan = off; SELECT count(*) FROM audit_log WHERE table_for(kind) = 'public.accounts'",
    ] {
        assert_eq!(dbs.dst.psql(sql), dbs.src.psql(sql), "{sql}");
    }
    assert_eq!(dbs.dst.psql("SELECT t FROM mv"), "public.accounts");
}

/// A name a function body holds in a variable, a parameter or a `CASE` of a
/// name type (`cfg regconfig := 'public.mycfg'`) is the shadow's while the
/// shadow is built: stored generated columns and index entries use the
/// source's configuration, not an older one of the same name the
/// destination has.
#[test]
fn a_name_a_function_body_holds_in_a_variable_is_the_shadows() {
    let dbs = TestDbs::new("body_names");
    dbs.src.psql(
        "CREATE TEXT SEARCH CONFIGURATION public.mycfg (COPY = pg_catalog.english);
         CREATE FUNCTION doc_tsv(t text) RETURNS tsvector IMMUTABLE LANGUAGE plpgsql AS $f$
           DECLARE cfg regconfig := 'public.mycfg'; BEGIN RETURN to_tsvector(cfg, t); END $f$;
         CREATE FUNCTION doc_tsv2(lang text, t text) RETURNS tsvector IMMUTABLE LANGUAGE sql AS $f$
           SELECT to_tsvector(CASE WHEN lang = 'en' THEN 'public.mycfg' ELSE 'pg_catalog.simple' END::regconfig, t) $f$;
         CREATE FUNCTION doc_tsv3(lang text, t text) RETURNS tsvector IMMUTABLE LANGUAGE plpgsql AS $f$
           DECLARE cfg regconfig; BEGIN
           cfg := CASE WHEN lang = 'en' THEN 'public.mycfg' ELSE 'pg_catalog.simple' END;
           RETURN to_tsvector(cfg, t) || to_tsvector(CAST(CASE WHEN lang = 'en' THEN 'public.mycfg' END AS regconfig), t); END $f$;
         CREATE FUNCTION lbl(t text, id int) RETURNS text IMMUTABLE LANGUAGE sql AS $f$
           SELECT t || '#' || id $f$;
         CREATE FUNCTION label(id int) RETURNS text IMMUTABLE LANGUAGE sql AS $f$
           SELECT substr('public.docs', 1) || ':' || public.lbl('public.docs', id) $f$;
         CREATE DOMAIN cfgname AS regconfig;
         CREATE FUNCTION doc_tsv4(t text) RETURNS tsvector IMMUTABLE LANGUAGE plpgsql AS $f$
           DECLARE c public.cfgname := 'public.mycfg'; BEGIN RETURN to_tsvector(c, t); END $f$;
         CREATE TABLE docs (id int PRIMARY KEY, lang text, body text,
           tsv tsvector GENERATED ALWAYS AS (doc_tsv(body)) STORED,
           tsv2 tsvector GENERATED ALWAYS AS (doc_tsv2(lang, body)) STORED,
           tsv3 tsvector GENERATED ALWAYS AS (doc_tsv3(lang, body)) STORED,
           tsv4 tsvector GENERATED ALWAYS AS (doc_tsv4(body)) STORED,
           tag text GENERATED ALWAYS AS (label(id)) STORED);
         CREATE INDEX docs_tsv ON docs USING gin (doc_tsv(body));
         INSERT INTO docs (id, lang, body) VALUES (1, 'en', 'the running dogs are jumping'), (2, 'fr', 'les chiens courent');",
    );
    dbs.dst
        .psql("CREATE TEXT SEARCH CONFIGURATION public.mycfg (COPY = pg_catalog.simple)");
    start(&dbs);
    let sql = "SELECT id, tsv, tsv2, tsv3, tsv4, tag FROM docs ORDER BY id";
    assert_eq!(dbs.dst.psql(sql), dbs.src.psql(sql));
    let by_index =
        "SET enable_seqscan = off; SELECT id FROM docs WHERE doc_tsv(body) @@ 'dog'::tsquery";
    assert_eq!(dbs.dst.psql(by_index), "1");
}

/// Casts belong to no schema, so `pg_dump -n` leaves them out. Those from or
/// to a type the migration creates come with it: created on the shadow's type
/// before what uses them (a view, a column default), with their comment, and
/// they follow the type through the swap and the rollback; the destination's
/// own cast of its older type stays with that type. A cast between types
/// the migration does not create is still only warned about.
#[test]
fn the_sources_casts_of_its_own_types_come_with_them() {
    let dbs = TestDbs::new("casts");
    let app = |word: &str| {
        format!(
            "CREATE TYPE mood AS ENUM ('ok', 'sad');
             CREATE FUNCTION mood_text(mood) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT format('{word}:%s', $1) $$;
             CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood) AS ASSIGNMENT;
             COMMENT ON CAST (mood AS text) IS '{word} words';"
        )
    };
    dbs.src.psql(&app("new"));
    dbs.src.psql(
        "CREATE TYPE pair AS (a int, b int);
         CREATE FUNCTION pair_sum(pair) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1.a + $1.b';
         CREATE CAST (pair AS int) WITH FUNCTION pair_sum(pair) AS IMPLICIT;
         CREATE CAST (mood[] AS int) WITH INOUT;
         CREATE TABLE t (id int PRIMARY KEY, m mood, p pair,
                         said text DEFAULT CAST('sad'::mood AS text));
         INSERT INTO t (id, m, p) VALUES (1, 'ok', ROW(2, 3));
         CREATE VIEW words AS SELECT id, m::text AS word, p::int AS total FROM t;
         -- between types the migration does not create: left behind
         CREATE FUNCTION point_words(point) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT ''a point''';
         CREATE CAST (point AS text) WITH FUNCTION point_words(point);
         -- with a function of a schema not migrated (it takes the live type)
         CREATE SCHEMA util; CREATE TYPE wish AS ENUM ('a');
         CREATE FUNCTION util.wish_int(wish) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1';
         CREATE CAST (wish AS int) WITH FUNCTION util.wish_int(wish);",
    );
    dbs.dst.psql(&app("old"));
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let p: serde_json::Value =
        serde_json::from_str(&wd.run_ok(&["prepare", "--source", &src, "--dest", &dst, "--json"]))
            .unwrap();
    let warnings = p["warnings"].to_string();
    assert!(
        warnings.contains("casts belong to no schema; these do not come with the migration: cast from point to text, cast from wish to integer (a cast comes along when"),
        "{warnings}"
    );
    assert!(
        !warnings.contains("mood") && !warnings.contains("pair"),
        "{warnings}"
    );
    // Before the swap the application still has its own.
    let words = "SELECT 'ok'::mood::text";
    assert_eq!(dbs.dst.psql(words), "old:ok");
    wd.run_ok(&["swap", "--dest", &dst]);
    let view = "SELECT id, word, total, said FROM words JOIN t USING (id)";
    assert_eq!(dbs.dst.psql(view), dbs.src.psql(view));
    assert_eq!(dbs.dst.psql(view), "1|new:ok|5|new:sad");
    assert_eq!(dbs.dst.psql(words), "new:ok");
    let casts = "SELECT format('%s %s %s %s %s', castsource::regtype, casttarget::regtype,
                        coalesce(castfunc::regprocedure::text, '-'), castcontext, castmethod)
                        || coalesce(' ' || obj_description(oid, 'pg_cast'), '') AS c
                   FROM pg_cast WHERE oid >= 16384 AND castsource <> 'point'::regtype
                    AND castsource::regtype::text <> 'wish'
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_cast'::regclass
                                     AND d.objid = pg_cast.oid AND d.deptype = 'i')";
    let on_source = dbs.src.psql(&format!("{casts} ORDER BY 1"));
    assert_eq!(
        on_source,
        "mood text mood_text(mood) a f new words\nmood[] integer - e i\npair integer pair_sum(pair) i f"
    );
    // In public, as on the source; the destination's own went with its type
    // into the backup.
    let live = format!("SELECT c FROM ({casts}) x WHERE c !~ 'backup_' ORDER BY 1");
    assert_eq!(dbs.dst.psql(&live), on_source);
    assert_eq!(
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM ({casts}) x WHERE c ~ 'backup_'"
        )),
        "1"
    );
    // The rollback brings it back with its type; cleaning up the
    // swapped-out backup takes the source's along.
    wd.run_ok(&["rollback", "--dest", &dst, "--latest"]);
    assert_eq!(dbs.dst.psql(words), "old:ok");
    let far = (chrono::Utc::now() + chrono::Duration::days(1))
        .timestamp_millis()
        .to_string();
    wd.run_ok(&["cleanup", "--dest", &dst, "--before", &far]);
    assert_eq!(dbs.dst.psql(words), "old:ok");
    assert_eq!(
        dbs.dst.psql(&format!("SELECT count(*) FROM ({casts}) x")),
        "1"
    );
}

/// Casts whose place in the dump is not where a name alone would put them:
/// on an enum with PostGIS installed (the swap moves objects one by one), a
/// multirange (created with its range), an array whose own name differs in
/// the shadow, a partition's row type (its ATTACH comes later), a function
/// overloaded after the view that uses the cast, a name with a newline. Each
/// is created before its view, and the views read as on the source. A cast
/// whose other type is the row type of a table left out, or of a schema the
/// destination lacks, does not come (said at prepare).
#[test]
fn casts_placed_by_what_they_need_come_along() {
    let dbs = TestDbs::new("casts_placed");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    dbs.src.psql(
        "CREATE TYPE hue AS ENUM ('red', 'blue');
         CREATE FUNCTION hue_n(hue) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT 7 $$;
         CREATE CAST (hue AS int) WITH FUNCTION hue_n(hue);
         CREATE TABLE paint (id int PRIMARY KEY, h hue);
         INSERT INTO paint VALUES (1, 'blue');
         CREATE VIEW paint_n AS SELECT id, h::int AS n FROM paint;
         CREATE FUNCTION hue_n(paint_n) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT 8 $$;
         CREATE TABLE _shade (x int);
         CREATE TYPE shade AS ENUM ('dark');
         CREATE FUNCTION shades(shade[]) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT cardinality($1) $$;
         CREATE CAST (shade[] AS int) WITH FUNCTION shades(shade[]);
         CREATE VIEW shade_n AS SELECT ARRAY['dark', 'dark']::shade[]::int AS n;
         CREATE TYPE floatrange AS RANGE (subtype = float8);
         CREATE CAST (floatmultirange AS text) WITH INOUT;
         CREATE VIEW spans AS SELECT floatmultirange(floatrange(1, 2))::text AS s;
         CREATE TABLE ev (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE ev1 PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');
         INSERT INTO ev VALUES (5, '2024-01-01');
         CREATE FUNCTION ev1_id(ev1) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT $1.id $$;
         CREATE CAST (ev1 AS int) WITH FUNCTION ev1_id(ev1);
         CREATE VIEW ev_ids AS SELECT e::int AS n FROM ev1 e;
         CREATE TYPE U&\"two\\000Awords\" AS ENUM ('a');
         CREATE FUNCTION tw(U&\"two\\000Awords\") RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT 3 $$;
         CREATE CAST (U&\"two\\000Awords\" AS int) WITH FUNCTION tw(U&\"two\\000Awords\");
         CREATE VIEW tw_n AS SELECT 'a'::U&\"two\\000Awords\"::int AS n;
         -- to an extension's type the destination gets at prepare
         CREATE EXTENSION citext;
         CREATE CAST (hue AS citext) WITH INOUT;
         -- left behind: the row type of a table not migrated, a type of a
         -- schema the destination lacks
         CREATE TABLE keepme (id int);
         CREATE CAST (keepme AS hue) WITH INOUT;
         CREATE SCHEMA other; CREATE TYPE other.x AS ENUM ('a');
         CREATE CAST (hue AS other.x) WITH INOUT;",
    );
    dbs.dst.psql("CREATE TABLE keepme (id int)");
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let p: serde_json::Value = serde_json::from_str(&wd.run_ok(&[
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--exclude-table",
        "keepme",
        "--json",
    ]))
    .unwrap();
    let warnings = p["warnings"].to_string();
    assert!(
        warnings.contains(
            "these do not come with the migration: cast from hue to other.x, cast from keepme to hue ("
        ),
        "{warnings}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&wd.run_ok(&["swap", "--dest", &dst, "--json"])).unwrap();
    assert_eq!(s["swap_mode"], "object", "{s}");
    let views = "SELECT (SELECT n FROM paint_n), (SELECT n FROM shade_n), (SELECT s FROM spans),
                        (SELECT n FROM ev_ids), (SELECT n FROM tw_n), 'RED'::citext = 'red'::hue::citext";
    assert_eq!(dbs.dst.psql(views), dbs.src.psql(views));
    assert_eq!(dbs.dst.psql(views), "7|2|{[1,2)}|5|3|t");
    // The destination's own table (now in the backup) got no cast of the
    // source's.
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_cast c JOIN pg_type t ON t.oid = c.castsource WHERE t.typname = 'keepme'"
        ),
        "0"
    );
}

#[test]
fn a_failure_in_any_phase_leaves_nothing_behind() {
    let dbs = TestDbs::new("failpoints");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    dbs.src.psql(
        "CREATE TABLE t (id serial PRIMARY KEY, g geometry(Point, 4326), u uuid DEFAULT uuid_generate_v4());
         INSERT INTO t (g) SELECT ST_MakePoint(g, g) FROM generate_series(1, 50) g;
         CREATE INDEX t_g ON t USING gist (g);
         CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM t;",
    );
    dbs.dst
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);");
    let before_ddl = normalised_dump(&dbs.dst, "public");
    let before_data = data_fingerprint(&dbs.dst, "public");
    for phase in PREPARE_PHASES {
        let wd = Workdir::new();
        let out = wd.run_env(
            &[
                "prepare",
                "--source",
                &dbs.src.url(),
                "--dest",
                &dbs.dst.url(),
            ],
            &[("PGSHIFT_FAILPOINT", phase)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{phase}: {stderr}");
        assert!(
            stderr.contains(&format!("phase {phase}")),
            "{phase}: {stderr}"
        );
        let last = stderr.trim_end().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: prepare failed: phase "),
            "{stderr}"
        );
        assert_eq!(
            normalised_dump(&dbs.dst, "public"),
            before_ddl,
            "{phase}: public DDL changed"
        );
        assert_eq!(
            data_fingerprint(&dbs.dst, "public"),
            before_data,
            "{phase}: public data changed"
        );
        assert_eq!(
            dbs.dst
                .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
            "0",
            "{phase}: shadow left"
        );
        assert_eq!(
            dbs.dst
                .psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'"),
            "0",
            "{phase}: trigger left"
        );
        assert_eq!(
            dbs.dst.psql(
                "SELECT coalesce(string_agg(c.relname, ',' ORDER BY c.relname), '') FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgshift' AND c.relkind = 'r'"
            ),
            "backups,meta,migration",
            "{phase}: helper tables left"
        );
        assert_eq!(
            dbs.dst.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgshift'"),
            "0",
            "{phase}: helper functions left"
        );
        // The failure is on record, with its phase.
        assert_eq!(
            dbs.dst.psql(
                "SELECT status || ':' || phase FROM pgshift.migration ORDER BY id DESC LIMIT 1"
            ),
            format!("failed:{phase}")
        );
    }
    // And a clean run afterwards succeeds.
    let wd = Workdir::new();
    let out = wd.prepare(&dbs, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_ddl(&dbs.src, &dbs.dst);
}

/// The rich schema through a swap and a rollback object by object (PostGIS in
/// public picks that mode), with functions, an aggregate and an operator whose
/// signatures name the schema's own types and a table's row type, on both
/// sides: they move before those types and tables, in both directions. The new
/// public's DDL and rows are the source's; the rollback brings the
/// destination's back exactly.
#[test]
fn a_rich_schema_swaps_and_rolls_back_object_by_object() {
    let dbs = TestDbs::new("fidelity_object");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    dbs.src
        .psql(&common::sql_bodies_for(dbs.src.server_major(), RICH));
    dbs.src.psql(&common::sql_bodies_for(dbs.src.server_major(),
        "CREATE FUNCTION mood_min(a mood, b mood) RETURNS mood LANGUAGE sql IMMUTABLE RETURN least(a, b);
         CREATE AGGREGATE saddest(mood) (SFUNC = mood_min, STYPE = mood);
         CREATE OPERATOR === (LEFTARG = mood, RIGHTARG = mood, FUNCTION = mood_min);
         CREATE FUNCTION user_line(u users) RETURNS text LANGUAGE sql RETURN u.id || ':' || u.email;",
    ));
    dbs.dst.psql(&common::sql_bodies_for(dbs.dst.server_major(),
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE users (id serial PRIMARY KEY, email text, mood mood);
         INSERT INTO users (email, mood) VALUES ('old@example.com', 'sad');
         CREATE FUNCTION mood_rank(m mood) RETURNS int LANGUAGE sql IMMUTABLE RETURN array_position(enum_range(NULL::mood), m);
         CREATE FUNCTION user_line(u users) RETURNS text LANGUAGE sql RETURN u.email;",
    ));
    let src_ddl = normalised_dump(&dbs.src, "public");
    let src_data = data_fingerprint(&dbs.src, "public");
    let dst_ddl = normalised_dump(&dbs.dst, "public");
    let dst_data = data_fingerprint(&dbs.dst, "public");

    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let out = wd.run(&["start", "--json", "--source", &src, "--dest", &dst]);
    assert!(
        out.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["swap"]["swap_mode"], "object", "{started}");
    assert_eq!(normalised_dump(&dbs.dst, "public"), src_ddl);
    assert_eq!(data_fingerprint(&dbs.dst, "public"), src_data);
    assert_eq!(
        dbs.dst
            .psql("SELECT saddest(mood) FROM users WHERE mood IS NOT NULL"),
        dbs.src
            .psql("SELECT saddest(mood) FROM users WHERE mood IS NOT NULL")
    );

    let out = wd.run(&["rollback", "--latest", "--dest", &dst]);
    assert!(
        out.status.success(),
        "rollback failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(normalised_dump(&dbs.dst, "public"), dst_ddl);
    assert_eq!(data_fingerprint(&dbs.dst, "public"), dst_data);
}

/// Objects the destination does not have yet follow the source: its owner
/// (a role the destination has), its grants to the destination's roles, and
/// its REVOKE from PUBLIC, so a new SECURITY DEFINER function is not
/// executable by everyone after the swap. Grants to roles only the source has
/// are left out with a warning. Namesakes keep the destination's owner and
/// grants.
#[test]
fn new_objects_keep_the_sources_owner_and_grants() {
    let dbs = TestDbs::new("new_grants");
    let pid = std::process::id();
    let (app, owner, gone) = (
        format!("app_new_{pid}"),
        format!("owner_new_{pid}"),
        format!("gone_new_{pid}"),
    );
    let create = |db: &TestDb, role: &str| {
        db.psql(&create_role(role, ""));
    };
    for db in [&dbs.src, &dbs.dst] {
        create(db, &app);
        create(db, &owner);
    }
    create(&dbs.src, &gone);
    dbs.src.psql(&format!(
        "CREATE TABLE old_t (id int PRIMARY KEY);
         GRANT SELECT ON old_t TO {app};
         CREATE TABLE new_t (id int PRIMARY KEY, note text);
         ALTER TABLE new_t OWNER TO {owner};
         GRANT SELECT ON new_t TO {app};
         GRANT SELECT (id) ON new_t TO {gone};
         CREATE FUNCTION new_f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
         REVOKE ALL ON FUNCTION new_f() FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION new_f() TO {app};
         CREATE FUNCTION open_f() RETURNS int LANGUAGE sql AS 'SELECT 2';"
    ));
    dbs.dst.psql(&format!(
        "CREATE TABLE old_t (id int PRIMARY KEY);
         GRANT INSERT ON old_t TO {app};"
    ));
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let out = wd.run(&["start", "--json", "--source", &src, "--dest", &dst]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = |sql: &str| dbs.dst.psql(sql);
    assert_eq!(
        q("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.new_t'::regclass"),
        owner
    );
    assert_eq!(
        q(&format!(
            "SELECT has_table_privilege('{app}', 'public.new_t', 'SELECT')"
        )),
        "t"
    );
    assert_eq!(
        q("SELECT has_function_privilege('public', 'public.new_f()', 'EXECUTE')"),
        "f"
    );
    assert_eq!(
        q(&format!(
            "SELECT has_function_privilege('{app}', 'public.new_f()', 'EXECUTE')"
        )),
        "t"
    );
    // A function the source left to PUBLIC stays so.
    assert_eq!(
        q("SELECT has_function_privilege('public', 'public.open_f()', 'EXECUTE')"),
        "t"
    );
    // The namesake keeps the destination's grants, not the source's.
    assert_eq!(
        q(&format!(
            "SELECT has_table_privilege('{app}', 'public.old_t', 'SELECT') || ':' || has_table_privilege('{app}', 'public.old_t', 'INSERT')"
        )),
        "false:true"
    );
    let warnings = report["prepare"]["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "grants of new objects in public to roles the destination does not have were left out: {gone}"
        )),
        "{report}"
    );
}

/// `--keep-source-owners` gives every object its owner on the source, not
/// the tables alone: views, sequences, functions, types and domains too, also
/// where the destination's namesake has another owner.
#[test]
fn keep_source_owners_covers_every_kind_of_object() {
    let dbs = TestDbs::new("keep_owners");
    let pid = std::process::id();
    let (owner, other) = (format!("owner_ko_{pid}"), format!("other_ko_{pid}"));
    for db in [&dbs.src, &dbs.dst] {
        for role in [&owner, &other] {
            db.psql(&create_role(role, ""));
        }
    }
    let objects = "CREATE TABLE t (id serial PRIMARY KEY);
         CREATE VIEW v AS SELECT id FROM t;
         CREATE SEQUENCE s;
         CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE TYPE e AS ENUM ('a');
         CREATE DOMAIN d AS int CHECK (VALUE > 0);";
    let owned_by = |role: &str| {
        format!(
            "ALTER TABLE t OWNER TO {role}; ALTER VIEW v OWNER TO {role};
             ALTER SEQUENCE s OWNER TO {role}; ALTER FUNCTION f() OWNER TO {role};
             ALTER TYPE e OWNER TO {role}; ALTER DOMAIN d OWNER TO {role};"
        )
    };
    dbs.src.psql(&format!("{objects} {}", owned_by(&owner)));
    // The destination's namesakes of some belong to another role.
    dbs.dst.psql(&format!(
        "CREATE TABLE t (id serial PRIMARY KEY); CREATE SEQUENCE s;
         CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 0';
         ALTER TABLE t OWNER TO {other}; ALTER SEQUENCE s OWNER TO {other};
         ALTER FUNCTION f() OWNER TO {other};"
    ));
    let wd = Workdir::new();
    wd.run_ok(&[
        "start",
        "--keep-source-owners",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    let owners = dbs.dst.psql(
        "SELECT string_agg(name || '=' || who, ',' ORDER BY name) FROM (
           SELECT c.relname::text AS name, pg_get_userbyid(c.relowner) AS who FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S')
           UNION ALL SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace
           UNION ALL SELECT y.typname, pg_get_userbyid(y.typowner) FROM pg_type y
            WHERE y.typnamespace = 'public'::regnamespace AND y.typtype IN ('e', 'd')) x",
    );
    let want = ["d", "e", "f", "s", "t", "t_id_seq", "v"]
        .map(|n| format!("{n}={owner}"))
        .join(",");
    assert_eq!(owners, want);
}

/// The restore creates the shadow's objects as this role, so the
/// destination's default privileges for this role (`ALTER DEFAULT PRIVILEGES
/// GRANT SELECT ON TABLES TO ro`, `REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC`,
/// common on managed servers) landed on them: a new table readable by a role
/// the source never granted, a new function no longer executable by PUBLIC,
/// and namesakes with grants the live objects do not have. The grants are now
/// levelled to the model's (the source's for new objects, the live namesake's
/// otherwise).
#[test]
fn the_destinations_default_privileges_do_not_leak_into_the_shadow() {
    let dbs = TestDbs::new("default_acl");
    let ro = format!("ro_defacl_{}", std::process::id());
    for db in [&dbs.src, &dbs.dst] {
        db.psql(&create_role(&ro, ""));
    }
    dbs.src.psql(&format!(
        "CREATE TABLE secrets (id int PRIMARY KEY, token text);
         CREATE TABLE shared (id int PRIMARY KEY);
         GRANT SELECT ON shared TO {ro};
         CREATE TABLE old_t (id int PRIMARY KEY);
         CREATE FUNCTION hello() RETURNS int LANGUAGE sql AS 'SELECT 1';"
    ));
    dbs.dst.psql(&format!(
        "CREATE TABLE old_t (id int PRIMARY KEY);
         GRANT INSERT ON old_t TO {ro};
         ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {ro};
         ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO {ro};
         ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
         ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {ro};"
    ));
    let wd = Workdir::new();
    assert_success(&wd.start(&dbs, &[]));
    let can = |sql: &str| dbs.dst.psql(&format!("SELECT {sql}"));
    assert_eq!(
        can(&format!(
            "has_table_privilege('{ro}', 'public.secrets', 'SELECT')"
        )),
        "f"
    );
    assert_eq!(
        can(&format!(
            "has_table_privilege('{ro}', 'public.shared', 'SELECT')"
        )),
        "t"
    );
    assert_eq!(
        can(&format!(
            "has_table_privilege('{ro}', 'public.old_t', 'SELECT') || ':' || has_table_privilege('{ro}', 'public.old_t', 'INSERT')"
        )),
        "false:true"
    );
    assert_eq!(
        can("has_function_privilege('public', 'public.hello()', 'EXECUTE')"),
        "t"
    );
    // pgshift's own schema (manifests, changelogs, sync functions) stays its
    // owner's: the default USAGE grant is taken back when it is created.
    assert_eq!(
        can(&format!("has_schema_privilege('{ro}', 'pgshift', 'USAGE')")),
        "f"
    );
}

/// Owners and grants changed on the live destination between prepare and the
/// swap hold after the swap (owners, table, column and function privileges,
/// grant options), in both modes.
#[test]
fn grants_changed_after_prepare_hold_after_the_swap() {
    let pid = std::process::id();
    let (r1, r2) = (format!("late_r1_{pid}"), format!("late_r2_{pid}"));
    for mode in ["rename", "object"] {
        let dbs = TestDbs::new(&format!("late_grants_{mode}"));
        let ddl = format!(
            "{}
             {}
             CREATE TABLE t (id int PRIMARY KEY, secret text);
             CREATE TABLE u (id int PRIMARY KEY);
             CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            create_role(&r1, ""),
            create_role(&r2, "")
        );
        dbs.src.psql(&ddl);
        dbs.dst.psql(&ddl);
        // A sequence another role owns on the destination that the source's
        // version makes a column's: it takes its table's owner, and the role
        // that owned it keeps every privilege on it by a grant (h46a).
        dbs.dst.psql(&format!(
            "CREATE SEQUENCE s; ALTER SEQUENCE s OWNER TO {r2};
             CREATE TABLE w (id int DEFAULT nextval('s'));"
        ));
        dbs.src.psql(
            "CREATE TABLE w (id int); CREATE SEQUENCE s OWNED BY w.id;
             ALTER TABLE w ALTER id SET DEFAULT nextval('s');",
        );
        // A column new in the source's version takes the source's grants
        // (the destination has none to give it), and keeps them at the swap.
        dbs.src.psql(&format!(
            "ALTER TABLE t ADD COLUMN fresh int; GRANT SELECT (fresh) ON t TO {r1};"
        ));
        // Columns the source dropped: their grants are left out, with a
        // word, at prepare and at the swap.
        dbs.dst.psql(&format!(
            "GRANT SELECT ON t TO {r1};
             GRANT SELECT (secret) ON t TO {r1};
             ALTER TABLE t ADD COLUMN legacy int, ADD COLUMN later int;
             GRANT SELECT (id, legacy) ON t TO {r2};"
        ));
        let wd = Workdir::new();
        let out = assert_success(&wd.prepare(&dbs, &["--json"]));
        assert!(
            out.contains("column privileges of the destination's columns that the source's tables do not have were left out: t.legacy"),
            "{out}"
        );
        dbs.dst.psql(&format!(
            "GRANT UPDATE (later) ON t TO {r1};
             GRANT INSERT ON t TO {r2};
             REVOKE SELECT ON t FROM {r1};
             GRANT SELECT (secret) ON t TO {r1};
             GRANT UPDATE (secret) ON t TO {r1};
             REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION f() TO {r2} WITH GRANT OPTION;
             ALTER TABLE u OWNER TO {r2};
             GRANT SELECT ON u TO {r1};"
        ));
        assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url(), "--swap-mode", mode]));
        assert_eq!(
            dbs.dst.psql(&format!(
                "SELECT concat_ws(',',
                    has_table_privilege('{r2}', 'public.t', 'INSERT'),
                    has_table_privilege('{r1}', 'public.t', 'SELECT'),
                    has_column_privilege('{r1}', 'public.t', 'secret', 'UPDATE'),
                    has_column_privilege('{r1}', 'public.t', 'fresh', 'SELECT'),
                    has_column_privilege('{r1}', 'public.t', 'secret', 'SELECT'),
                    has_function_privilege('public', 'public.f()', 'EXECUTE'),
                    has_function_privilege('{r2}', 'public.f()', 'EXECUTE WITH GRANT OPTION'))"
            )),
            "t,f,t,t,t,f,t",
            "{mode}"
        );
        // The owner changed since prepare too.
        assert_eq!(
            dbs.dst.psql(&format!(
                "SELECT concat_ws(',', pg_get_userbyid(relowner),
                    has_table_privilege('{r1}', 'public.u', 'SELECT'))
                   FROM pg_class WHERE oid = 'public.u'::regclass"
            )),
            format!("{r2},t"),
            "{mode}"
        );
        assert_eq!(
            dbs.dst.psql(&format!(
                "SELECT has_sequence_privilege('{r2}', 'public.s', 'USAGE')::text
                        || has_sequence_privilege('{r2}', 'public.s', 'UPDATE')::text"
            )),
            "truetrue",
            "{mode}"
        );
    }
}

/// A table that cannot travel in binary (an enum array makes one) travels as
/// text, which each server writes and reads under its own settings unless
/// pgshift fixes them: a source database set to `DateStyle = 'SQL, DMY'`,
/// `IntervalStyle = sql_standard` and `extra_float_digits = 0`, read by a
/// destination set to `MDY`, turned December 5th into May 12th, `-1 days
/// -02:00` into `-1 days +02:00` and 0.30000000000000004 into 0.3. And `reg*`
/// values travelled in binary as OIDs, which name another object (or none)
/// on the destination: they now travel as names, and name the migrated
/// objects after the swap. `--verify checksums` agrees (a `reg*` value's text
/// is taken with the migration's schemas on the path, on each side).
#[test]
fn text_copies_ignore_the_servers_own_settings_and_reg_values_travel_as_names() {
    let dbs = TestDbs::new("text_io");
    let set = |db: &TestDb, settings: &[(&str, &str)]| {
        for (k, v) in settings {
            db.psql(&format!(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {k} = %L', current_database(), '{v}'); END $$;"
            ));
        }
    };
    set(
        &dbs.src,
        &[
            ("datestyle", "SQL, DMY"),
            ("intervalstyle", "sql_standard"),
            ("extra_float_digits", "0"),
            ("timezone", "America/New_York"),
            ("quote_all_identifiers", "on"),
        ],
    );
    set(
        &dbs.dst,
        &[
            ("datestyle", "SQL, MDY"),
            ("timezone", "America/New_York"),
            ("array_nulls", "off"),
        ],
    );
    for db in [&dbs.src, &dbs.dst] {
        db.psql(
            "CREATE EXTENSION IF NOT EXISTS hstore;
             CREATE FUNCTION local_day(timestamptz) RETURNS date IMMUTABLE LANGUAGE sql AS 'SELECT $1::date';
             CREATE DOMAIN public.name AS text;
             CREATE TABLE notes (id int PRIMARY KEY, at timestamptz);",
        );
    }
    dbs.dst
        .psql("INSERT INTO notes VALUES (1, '2020-12-05 10:00:00+00'), (2, NULL)");
    dbs.src.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TEXT SEARCH CONFIGURATION my_cfg (COPY = pg_catalog.english);
         CREATE TABLE t_txt (id int PRIMARY KEY, tags mood[], d date, ts timestamp,
                             tz timestamptz CHECK (tz > '2000-01-01 00:00:00+00'), iv interval, f float8, m money,
                             words text[], day date GENERATED ALWAYS AS (local_day(tz)) STORED);
         INSERT INTO t_txt VALUES (1, '{sad,happy}', '2020-12-05', '2020-12-05 10:00',
                                   '2020-12-06 02:00:00+00', '-1 days -2 hours', 0.1::float8 + 0.2, 1234.56,
                                   '{a,NULL}');
         CREATE TABLE t_bin (id int PRIMARY KEY, tz timestamptz,
                             day date GENERATED ALWAYS AS (local_day(tz)) STORED);
         INSERT INTO t_bin VALUES (1, '2020-12-06 02:00:00+00');
         CREATE TABLE docs (id int PRIMARY KEY, cfg regconfig, tbl regclass, typ regtype, cfgs regconfig[],
                            ext regtype, hidden regtype DEFAULT 'public.name');
         INSERT INTO docs VALUES (1, 'english', 'docs', 'mood', '{simple,my_cfg}', 'hstore'),
                                 (2, 'my_cfg', 't_txt', 'int4', NULL, NULL);",
    );
    // The destination has its own docs: a regclass OID copied as is would
    // name its table, which the swap puts in the backup.
    // (An enum of its own first: the shadow's `mood` gets another OID than
    // the source's, which a binary copy of `mood[]` would trip on.)
    dbs.dst.psql(
        "CREATE TYPE dst_only AS ENUM ('x'); CREATE TABLE docs (id int PRIMARY KEY); CREATE TABLE filler (x int);",
    );
    let wd = Workdir::new();
    // Prepare with checksums, then swap: the checksums' settings stay out of
    // the session that records the shadow's structure (a CHECK with a
    // timestamptz constant prints in the session's TimeZone).
    // A preserved table makes the swap time its lock window, which read
    // back the window's start under the destination's DateStyle (`SQL, MDY`
    // wrote it as 12/06/2026…, which failed to read back as a timestamp).
    assert_success(&wd.run(&[
        "prepare",
        "--verify",
        "checksums",
        "--preserved-tables",
        "notes",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]));
    dbs.dst
        .psql("INSERT INTO notes VALUES (3, '2020-12-06 02:00:00+00')");
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(
        dbs.dst.psql(
            "SET timezone = 'UTC'; SELECT string_agg(id || ':' || coalesce(to_char(at, 'YYYY-MM-DD HH24'), '-'), ',' ORDER BY id) FROM notes"
        ),
        "1:2020-12-05 10,2:-,3:2020-12-06 02"
    );
    let fixed = "SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3; SET timezone = 'UTC'; SET lc_monetary = 'C';";
    let rows = |db: &TestDb| {
        db.psql(&format!(
            "{fixed} SELECT concat_ws(' | ', tags, d, ts, tz, iv, f, m, words, words[2] IS NULL) FROM t_txt"
        ))
    };
    assert_eq!(
        rows(&dbs.dst),
        "{sad,happy} | 2020-12-05 | 2020-12-05 10:00:00 | 2020-12-06 02:00:00+00 | -1 days -02:00:00 | 0.30000000000000004 | $1,234.56 | {a,NULL} | t"
    );
    assert_eq!(rows(&dbs.dst), rows(&dbs.src));
    // A generated column computing with the time zone gets the destination's
    // zone whichever format its table travelled in (text, binary).
    assert_eq!(
        dbs.dst
            .psql("SELECT (SELECT day FROM t_txt) = (SELECT day FROM t_bin)"),
        "t"
    );
    assert_eq!(dbs.dst.psql("SELECT day FROM t_bin"), "12/05/2020");
    let names =
        "SELECT string_agg(concat_ws(' ', cfg, tbl, typ, cfgs, ext), '; ' ORDER BY id) FROM docs";
    assert_eq!(
        dbs.dst.psql(names),
        "english docs mood {simple,my_cfg} hstore; my_cfg t_txt integer"
    );
    // They name the new public's objects, not the backup's.
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM docs WHERE tbl::oid IN ('public.docs'::regclass::oid, 'public.t_txt'::regclass::oid)
                AND typ::oid IN ('public.mood'::regtype::oid, 'int4'::regtype::oid)"
        ),
        "2"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT (cfg = 'public.my_cfg'::regconfig)::text FROM docs WHERE id = 2"),
        "true"
    );
    // A public type that pg_catalog's `name` hides from the search path:
    // the new public's, not the backup's.
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM docs WHERE hidden = 'public.name'::regtype"),
        "2"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT to_tsvector(cfg, 'running dogs')::text FROM docs WHERE id = 1"),
        "'dog':2 'run':1"
    );
}

/// A source in another encoding than the destination's (LATIN1, as legacy
/// databases are): the same characters arrive, in the schema (a table's and
/// an enum label's name, a default, a comment) and in the rows, by either
/// copy (a plain table goes binary, an enum array as text), and
/// `--verify checksums` agrees, although the two sides hold other bytes.
#[test]
fn a_source_in_another_encoding_arrives_with_the_same_characters() {
    let (src, dst) = common::clusters();
    let dbs = TestDbs {
        src: src.create_db_with(
            "src",
            "latin1",
            "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        ),
        dst: dst.create_db("dst", "latin1"),
    };
    assert_eq!(dbs.src.psql("SHOW server_encoding"), "LATIN1");
    dbs.src.psql(
        "SET client_encoding = 'UTF8';
         CREATE TYPE humeur AS ENUM ('ça va', 'très bien');
         CREATE TABLE \"café\" (id int PRIMARY KEY, nom text DEFAULT 'crème brûlée', h humeur[]);
         COMMENT ON TABLE \"café\" IS 'déjà vu';
         INSERT INTO \"café\" VALUES (1, 'Ångström ÿ', '{\"ça va\"}'), (2, DEFAULT, '{\"très bien\"}');
         CREATE TABLE plain (id int PRIMARY KEY, v text, c char(3));
         INSERT INTO plain VALUES (1, 'déjà', 'ñÑü'), (2, 'Übermaß ½ © µ', NULL);",
    );
    let wd = Workdir::new();
    assert_success(&wd.run(&[
        "prepare",
        "--verify",
        "checksums",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]));
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    // Compared as UTF-8 bytes on each side, whatever the session's encoding.
    let text = |db: &TestDb| {
        db.psql(
            "SET client_encoding = 'UTF8';
             SELECT encode(convert_to(concat_ws(' | ',
                 (SELECT string_agg(concat_ws(',', id, nom, h), ';' ORDER BY id) FROM \"café\"),
                 (SELECT string_agg(concat_ws(',', id, v, c), ';' ORDER BY id) FROM plain),
                 (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum
                   WHERE enumtypid = 'humeur'::regtype),
                 obj_description('\"café\"'::regclass, 'pg_class'),
                 (SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef
                   WHERE adrelid = '\"café\"'::regclass)), 'UTF8'), 'hex')",
        )
    };
    let want = text(&dbs.src);
    assert_eq!(text(&dbs.dst), want);
    assert_eq!(
        dbs.dst
            .psql("SET client_encoding = 'UTF8'; SELECT nom FROM \"café\" WHERE id = 1"),
        "Ångström ÿ"
    );
}

/// A destination in LATIN1 (or any encoding that cannot hold every
/// character): every statement pgshift sends is converted to it, comments
/// included, so one character outside it failed the dry run, prepare and the
/// swap before any row moved. The whole lifecycle runs, with a preserved
/// table written to in between, and the characters the encoding holds arrive.
#[test]
fn a_destination_in_latin1_takes_the_whole_lifecycle() {
    let (src, dst) = common::clusters();
    let dbs = TestDbs {
        src: src.create_db("src", "tolatin1"),
        dst: dst.create_db_with(
            "dst",
            "tolatin1",
            "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        ),
    };
    assert_eq!(dbs.dst.psql("SHOW server_encoding"), "LATIN1");
    let schema = "CREATE TABLE \"café\" (id int PRIMARY KEY, nom text DEFAULT 'crème');
         COMMENT ON TABLE \"café\" IS 'déjà vu';
         CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);";
    dbs.src.psql(&format!(
        "{schema} INSERT INTO \"café\" VALUES (1, 'Ångström ÿ'), (2, DEFAULT);"
    ));
    dbs.dst.psql(&format!(
        "SET client_encoding = 'UTF8'; {schema}
         INSERT INTO notes (body) VALUES ('née à Zürich'), ('ça');"
    ));
    let (s, d) = (dbs.src.url(), dbs.dst.url());
    let wd = Workdir::new();
    let prepare = [
        "prepare",
        "--verify",
        "checksums",
        "--preserved-tables",
        "notes",
        "--source",
        &s,
        "--dest",
        &d,
    ];
    let mut dry = prepare.to_vec();
    dry.push("--dry-run");
    let planned = wd.run_ok(&dry);
    // Said before anything moves: the encoding, and the character classes
    // (C here, C.UTF-8 on the source; both order text alike).
    for said in [
        "the destination's database encoding is LATIN1, the source's UTF8",
        "the destination's character classification (LC_CTYPE) is C (libc), the source's C.UTF-8 (libc)",
    ] {
        assert!(planned.contains(said), "{said}: {planned}");
    }
    assert!(!planned.contains("default collation"), "{planned}");
    wd.run_ok(&prepare);
    dbs.dst
        .psql("SET client_encoding = 'UTF8'; INSERT INTO notes (body) VALUES ('über')");
    wd.run_ok(&["status", "--json", "--dest", &d]);
    wd.run_ok(&["swap", "--dry-run", "--dest", &d]);
    wd.run_ok(&["swap", "--dest", &d]);
    let utf8 = |db: &TestDb, sql: &str| db.psql(&format!("SET client_encoding = 'UTF8'; {sql}"));
    assert_eq!(
        utf8(
            &dbs.dst,
            "SELECT string_agg(nom, ',' ORDER BY id) FROM \"café\""
        ),
        "Ångström ÿ,crème"
    );
    assert_eq!(
        utf8(
            &dbs.dst,
            "SELECT string_agg(body, ',' ORDER BY id) FROM notes"
        ),
        "née à Zürich,ça,über"
    );
    wd.run_ok(&["list", "--json", "--dest", &d]);
    wd.run_ok(&["verify", "--latest", "--dest", &d]);
    wd.run_ok(&["rollback", "--latest", "--dest", &d]);
    assert_eq!(utf8(&dbs.dst, "SELECT count(*) FROM \"café\""), "0");
    // A prepared migration abandoned, and the backups cleaned up.
    wd.run_ok(&prepare);
    wd.run_ok(&["abort", "--dest", &d]);
    let far = (chrono::Utc::now() + chrono::Duration::days(1))
        .timestamp_millis()
        .to_string();
    wd.run_ok(&["cleanup", "--dest", &d, "--before", &far]);
    assert_eq!(
        utf8(
            &dbs.dst,
            "SELECT string_agg(body, ',' ORDER BY id) FROM notes"
        ),
        "née à Zürich,ça,über"
    );
    // A name LATIN1 cannot hold fails prepare's schema phase, which names
    // the statement (the server's error has no position), and leaves nothing.
    dbs.src.psql("CREATE TABLE \"Ωmega\" (id int)");
    let out = wd.run(&prepare);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("has no equivalent in encoding \"LATIN1\", in: CREATE TABLE shadow.\"Ωmega\""),
        "{err}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
}

/// A built-in type without binary input and output (`aclitem`, a table that
/// keeps privileges), or an array or domain of it: its table is copied as
/// text, not failed on.
#[test]
fn a_built_in_type_without_binary_io_is_copied_as_text() {
    let dbs = TestDbs::new("aclitem");
    dbs.src.psql(
        "CREATE DOMAIN acl AS aclitem[];
         CREATE TABLE perms (id int PRIMARY KEY, item aclitem, items aclitem[], d acl);
         INSERT INTO perms
         SELECT 1, makeaclitem(current_user::regrole, current_user::regrole, 'SELECT', true),
                acldefault('r', current_user::regrole), acldefault('f', current_user::regrole);",
    );
    let wd = Workdir::new();
    assert_success(&wd.start(&dbs, &[]));
    let q = "SELECT item, items, d FROM perms";
    assert_eq!(dbs.dst.psql(q), dbs.src.psql(q));
}

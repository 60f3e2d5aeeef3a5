//! The session settings under which a value's text form means one thing.
//!
//! A value that travels as text (a text-format COPY, a preserved column
//! converted through `::text`, a checksum's `md5(row::text)`, the structure
//! fingerprint's printed defaults) is only as exact as the settings it is
//! written and read under. Left to the database's or the role's own, a
//! `SQL, DMY` DateStyle turned December 5th into May 12th on an `MDY`
//! destination, `extra_float_digits = 0` cut floats short, `sql_standard`
//! intervals flipped signs, `array_nulls = off` read a NULL element as the
//! string `NULL`, and `quote_all_identifiers` changed every printed name.
//!
//! Two sets, pg_dump's choices, and every place names the one it takes:
//!
//! - [`OUTPUT`]: how a value is *written*: ISO dates with numeric UTC offsets,
//!   `postgres` intervals, every float digit, hex bytea, money in the C
//!   locale, names unquoted unless needed; UTC, so the same row prints the
//!   same text on any server. Text COPY's source, checksums, the structure
//!   fingerprint.
//! - [`INPUT`]: what *reading* depends on. An ISO date and a timestamp with
//!   its offset read the same under any DateStyle and TimeZone, so those
//!   stay the destination's, as pg_restore leaves them (a stored generated
//!   column computing with the time zone gets the same value whichever
//!   format its table travelled in). Text COPY's destination.
//! - A conversion inside one destination session writes and reads:
//!   [`ROUND_TRIP`] is both sets, TimeZone again left as it is (the value
//!   goes out and comes back in the same zone). Preserved tables' copies,
//!   trigger functions and replays.
//!
//! [`set`] and [`set_local`] render a set as statements, [`clauses`] as a
//! function's `SET` clauses; values are literals quoted here, names are
//! these constants, never user input.

use crate::pg::ident::quote_literal;

/// A list of `(setting, value)`.
pub type Settings = &'static [(&'static str, &'static str)];

/// How a value is written as text (see the module doc).
pub const OUTPUT: Settings = &[
    ("datestyle", "ISO, YMD"),
    ("intervalstyle", "postgres"),
    ("extra_float_digits", "3"),
    ("timezone", "UTC"),
    ("lc_monetary", "C"),
    ("bytea_output", "hex"),
    ("quote_all_identifiers", "off"),
];

/// What reading a value's text depends on (see the module doc).
pub const INPUT: Settings = &[
    ("intervalstyle", "postgres"),
    ("lc_monetary", "C"),
    ("array_nulls", "on"),
];

/// Out through text and back in, in one session (see the module doc).
pub const ROUND_TRIP: Settings = &[
    ("datestyle", "ISO, YMD"),
    ("intervalstyle", "postgres"),
    ("extra_float_digits", "3"),
    ("array_nulls", "on"),
    ("lc_monetary", "C"),
    ("bytea_output", "hex"),
    ("quote_all_identifiers", "off"),
];

/// The search path under which a `reg*` value is written and read as text
/// the same on every side: the schemas its objects are in (`own`: the
/// migration's live schemas on the source, the shadows, or a backup's
/// schemas), then pg_catalog (after them, so that a built-in of the same
/// name never hides one of theirs), then `extensions_in`: the live schemas,
/// where the extensions' objects stay (`geometry`) while the rest moves.
pub fn text_path<'a>(
    own: impl IntoIterator<Item = &'a str>,
    extensions_in: &[&'a str],
) -> Vec<&'a str> {
    own.into_iter()
        .chain(["pg_catalog"])
        .chain(extensions_in.iter().copied())
        .collect()
}

/// `SET k = 'v'; …` for the rest of the session.
pub fn set(settings: Settings) -> String {
    render(settings, "SET ", "; ")
}

/// `SET LOCAL k = 'v'; …` for the rest of the transaction.
pub fn set_local(settings: Settings) -> String {
    render(settings, "SET LOCAL ", "; ")
}

/// ` SET k = 'v' …`: a function's own `SET` clauses (in force while it runs).
pub fn clauses(settings: Settings) -> String {
    settings
        .iter()
        .map(|(k, v)| format!(" SET {k} = {}", quote_literal(v)))
        .collect()
}

/// The settings' names (to read them before and put them back after).
pub fn names(settings: Settings) -> Vec<&'static str> {
    settings.iter().map(|(k, _)| *k).collect()
}

fn render(settings: Settings, verb: &str, sep: &str) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{verb}{k} = {}", quote_literal(v)))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_output_and_input_in_the_sessions_own_time_zone() {
        let mut both: Vec<_> = OUTPUT
            .iter()
            .chain(INPUT)
            .filter(|(k, _)| *k != "timezone")
            .copied()
            .collect();
        both.sort();
        both.dedup();
        let mut round_trip = ROUND_TRIP.to_vec();
        round_trip.sort();
        assert_eq!(round_trip, both);
    }

    #[test]
    fn text_paths_put_pg_catalog_after_the_own_schemas() {
        assert_eq!(
            text_path(["public", "app"], &[]),
            ["public", "app", "pg_catalog"]
        );
        assert_eq!(
            text_path(["shadow"], &["public"]),
            ["shadow", "pg_catalog", "public"]
        );
    }

    #[test]
    fn rendered_as_statements_and_as_function_clauses() {
        assert_eq!(
            set_local(INPUT),
            "SET LOCAL intervalstyle = 'postgres'; SET LOCAL lc_monetary = 'C'; SET LOCAL array_nulls = 'on'"
        );
        assert_eq!(&set(OUTPUT)[..28], "SET datestyle = 'ISO, YMD'; ");
        assert_eq!(
            clauses(&[("datestyle", "ISO, YMD"), ("array_nulls", "on")]),
            " SET datestyle = 'ISO, YMD' SET array_nulls = 'on'"
        );
        assert_eq!(
            names(INPUT),
            ["intervalstyle", "lc_monetary", "array_nulls"]
        );
    }
}

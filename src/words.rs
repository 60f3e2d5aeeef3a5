//! Enums whose variants are words: a migration's status, a phase, an
//! `sslmode`, a swap mode.
//!
//! [`words!`](crate::words::words) declares such an enum with each variant's
//! word written once, next to the variant (and any older spellings still read,
//! after `|`). The enum gets what every such enum needs: `Debug`, `Clone`,
//! `Copy`, `PartialEq`, `Eq`, `Hash`; `ALL` (every variant, in declaration
//! order); `as_str`; `from_word` (the word or an older spelling); `Display`;
//! and serde as the word, so JSON, the state file and the destination's record
//! spell it exactly as `as_str` does. A noun after the name (`enum Phase("phase")`)
//! adds `FromStr`, whose error is `unknown phase "…"`. Parsing with errors of
//! its own (an invalid `sslmode` names the parameter) stays with each type,
//! built on `from_word`.
//!
//! ```ignore
//! words! {
//!     /// Where a migration stands.
//!     pub enum Status {
//!         Prepared = "prepared",
//!         Swapped = "swapped" | "idle",
//!     }
//! }
//! ```

/// Declare an enum of words; see the module documentation.
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident $(($noun:literal))? {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)]
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; <[()]>::len(&[$($crate::words::words!(@unit $variant)),+])] =
                [$($name::$variant),+];

            /// Every variant's word, in declaration order.
            const WORDS: &'static [&'static str] = &[$($word),+];

            /// The variant's word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// The variant whose word (or older spelling) is exactly `word`.
            pub fn from_word(word: &str) -> Option<$name> {
                match word {
                    $($word $(| $alias)* => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<$name, D::Error> {
                struct Word;
                impl ::serde::de::Visitor<'_> for Word {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " word"))
                    }
                    fn visit_str<E: ::serde::de::Error>(self, word: &str) -> ::std::result::Result<$name, E> {
                        $name::from_word(word).ok_or_else(|| E::unknown_variant(word, $name::WORDS))
                    }
                }
                d.deserialize_str(Word)
            }
        }

        $(
            impl ::std::str::FromStr for $name {
                type Err = String;
                fn from_str(word: &str) -> ::std::result::Result<$name, String> {
                    $name::from_word(word).ok_or_else(|| format!(concat!("unknown ", $noun, " {:?}"), word))
                }
            }
        )?
    };
    (@unit $variant:ident) => {
        ()
    };
}

pub(crate) use words;

#[cfg(test)]
mod tests {
    words! {
        enum Sample("sample") {
            /// Documented variants keep their docs.
            One = "one",
            TwoWords = "two-words" | "two_words",
        }
    }

    #[test]
    fn each_variant_has_its_word() {
        assert_eq!(Sample::ALL, [Sample::One, Sample::TwoWords]);
        assert_eq!(Sample::TwoWords.as_str(), "two-words");
        assert_eq!(Sample::One.to_string(), "one");
        assert_eq!(Sample::from_word("two-words"), Some(Sample::TwoWords));
        assert_eq!(Sample::from_word("two_words"), Some(Sample::TwoWords));
        assert_eq!(Sample::from_word("Two-Words"), None);
        assert_eq!("two_words".parse::<Sample>(), Ok(Sample::TwoWords));
        assert_eq!(
            "three".parse::<Sample>(),
            Err("unknown sample \"three\"".to_string())
        );
    }

    #[test]
    fn serde_spells_the_word() {
        assert_eq!(
            serde_json::to_string(&Sample::TwoWords).unwrap(),
            "\"two-words\""
        );
        assert_eq!(
            serde_json::from_str::<Sample>("\"two_words\"").unwrap(),
            Sample::TwoWords
        );
        let e = serde_json::from_str::<Sample>("\"three\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown variant `three`, expected `one` or `two-words` at line 1 column 7"
        );
    }
}

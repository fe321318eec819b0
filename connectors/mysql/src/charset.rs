//! Column bytes → text by the column's character set, never by guessing.
//!
//! The binlog's table map (with `binlog_row_metadata=FULL`) gives each text
//! column's collation id; [`Charset::of_collation`] maps it to the character
//! set, and [`Charset::decode`] decodes by that set alone: bytes that are not
//! valid in it are an error, not read as another set.
//!
//! MySQL's `latin1` is Windows code page 1252 (`€` is 0x80, curly quotes are
//! 0x91–0x94), not ISO 8859-1; the five bytes cp1252 leaves undefined (0x81,
//! 0x8D, 0x8F, 0x90, 0x9D) map to the C1 controls of the same number, as
//! MySQL's own conversion table does.

use mysql_common::collations::{Collation, CollationId};

/// A character set Callosum decodes, or the name of one it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Latin1,
    Ascii,
    /// UCS-2, big-endian, no surrogates.
    Ucs2,
    /// UTF-16 big-endian.
    Utf16,
    /// UTF-16 little-endian.
    Utf16Le,
    /// UTF-32 big-endian.
    Utf32,
    Binary,
    /// A character set Callosum does not decode (its name).
    Unsupported(String),
}

/// Why bytes did not decode. Never holds the bytes.
pub type CharsetError = &'static str;

/// cp1252 0x80–0x9F as MySQL's `latin1` maps them.
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

impl Charset {
    /// The character set of a collation id (MySQL's ids, and MariaDB's:
    /// its `_nopad` collations are the base id + 1024). `0` (the table map
    /// did not say) reads as utf8mb4.
    pub fn of_collation(id: u16) -> Charset {
        if id == 0 {
            return Charset::Utf8;
        }
        let name = Self::charset_name(id);
        match name.as_deref() {
            Some("utf8mb4" | "utf8mb3" | "utf8") => Charset::Utf8,
            Some("latin1") => Charset::Latin1,
            Some("ascii") => Charset::Ascii,
            Some("ucs2") => Charset::Ucs2,
            Some("utf16") => Charset::Utf16,
            Some("utf16le") => Charset::Utf16Le,
            Some("utf32") => Charset::Utf32,
            Some("binary") => Charset::Binary,
            Some(other) => Charset::Unsupported(other.to_string()),
            None => Charset::Unsupported(format!("collation {id}")),
        }
    }

    fn charset_name(id: u16) -> Option<String> {
        let known = |id: u16| {
            let cid = CollationId::from(id);
            (cid != CollationId::UNKNOWN_COLLATION_ID)
                .then(|| Collation::from(cid).charset().to_string())
        };
        known(id)
            // MariaDB: `<base>_nopad_*` collations are the base id + 1024.
            .or_else(|| {
                (1024..2048)
                    .contains(&id)
                    .then(|| known(id - 1024))
                    .flatten()
            })
            .or(match id {
                // MariaDB's `*_mysql561_ci` collations.
                576..=578 => Some("utf8mb3".to_string()),
                608..=610 => Some("utf8mb4".to_string()),
                640..=642 => Some("ucs2".to_string()),
                672..=674 => Some("utf16".to_string()),
                736..=738 => Some("utf32".to_string()),
                _ => None,
            })
    }

    /// Whether a character set, by its name in `information_schema`, is
    /// decoded.
    pub fn is_supported_name(name: &str) -> bool {
        matches!(
            name,
            "utf8mb4"
                | "utf8mb3"
                | "utf8"
                | "latin1"
                | "ascii"
                | "ucs2"
                | "utf16"
                | "utf16le"
                | "utf32"
                | "binary"
        )
    }

    /// Whether the set is decoded.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Charset::Unsupported(_))
    }

    /// The set's name, for messages.
    pub fn name(&self) -> &str {
        match self {
            Charset::Utf8 => "utf8mb4",
            Charset::Latin1 => "latin1",
            Charset::Ascii => "ascii",
            Charset::Ucs2 => "ucs2",
            Charset::Utf16 => "utf16",
            Charset::Utf16Le => "utf16le",
            Charset::Utf32 => "utf32",
            Charset::Binary => "binary",
            Charset::Unsupported(name) => name,
        }
    }

    /// Decodes `bytes` by this set. `Binary` and unsupported sets are an
    /// error here: binary strings are bytes, not text.
    pub fn decode(&self, bytes: &[u8]) -> Result<String, CharsetError> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| "text that is not valid UTF-8 in a utf8 column"),
            Charset::Latin1 => Ok(bytes.iter().map(|b| latin1_char(*b)).collect()),
            Charset::Ascii => {
                if bytes.is_ascii() {
                    Ok(bytes.iter().map(|b| char::from(*b)).collect())
                } else {
                    Err("a byte over 0x7F in an ascii column")
                }
            }
            Charset::Ucs2 => {
                let units = units16(bytes, u16::from_be_bytes)?;
                if units.iter().any(|u| (0xD800..0xE000).contains(u)) {
                    return Err("a surrogate code unit in a ucs2 column");
                }
                Ok(units
                    .iter()
                    .map(|u| char::from_u32(u32::from(*u)).unwrap_or('\u{FFFD}'))
                    .collect())
            }
            Charset::Utf16 => String::from_utf16(&units16(bytes, u16::from_be_bytes)?)
                .map_err(|_| "text that is not valid UTF-16 in a utf16 column"),
            Charset::Utf16Le => String::from_utf16(&units16(bytes, u16::from_le_bytes)?)
                .map_err(|_| "text that is not valid UTF-16 in a utf16le column"),
            Charset::Utf32 => {
                if bytes.len() % 4 != 0 {
                    return Err("a utf32 value whose length is not a multiple of 4");
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| {
                        char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                            .ok_or("an invalid code point in a utf32 column")
                    })
                    .collect()
            }
            Charset::Binary => Err("binary bytes are not text"),
            Charset::Unsupported(_) => Err("a character set Callosum does not decode"),
        }
    }
}

/// A MySQL `latin1` (cp1252) byte.
pub fn latin1_char(b: u8) -> char {
    match b {
        0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

fn units16(bytes: &[u8], f: fn([u8; 2]) -> u16) -> Result<Vec<u16>, CharsetError> {
    if bytes.len() % 2 != 0 {
        return Err("a UTF-16/UCS-2 value with an odd number of bytes");
    }
    Ok(bytes.chunks_exact(2).map(|c| f([c[0], c[1]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn collations_map_to_their_sets() {
        assert_eq!(Charset::of_collation(8), Charset::Latin1); // latin1_swedish_ci
        assert_eq!(Charset::of_collation(47), Charset::Latin1); // latin1_bin
        assert_eq!(Charset::of_collation(1024 + 8), Charset::Latin1); // MariaDB nopad
        assert_eq!(Charset::of_collation(45), Charset::Utf8);
        assert_eq!(Charset::of_collation(33), Charset::Utf8);
        assert_eq!(Charset::of_collation(255), Charset::Utf8); // utf8mb4_0900_ai_ci
        assert_eq!(Charset::of_collation(35), Charset::Ucs2);
        assert_eq!(Charset::of_collation(54), Charset::Utf16);
        assert_eq!(Charset::of_collation(56), Charset::Utf16Le);
        assert_eq!(Charset::of_collation(60), Charset::Utf32);
        assert_eq!(Charset::of_collation(11), Charset::Ascii);
        assert_eq!(Charset::of_collation(63), Charset::Binary);
        assert_eq!(Charset::of_collation(0), Charset::Utf8);
        // cp1251_general_ci: named, not guessed.
        assert_eq!(
            Charset::of_collation(51),
            Charset::Unsupported("cp1251".into())
        );
        assert!(!Charset::of_collation(9999).is_supported());
    }

    #[test]
    fn latin1_is_mysql_cp1252() {
        let l = Charset::Latin1;
        assert_eq!(l.decode(b"\x80 \x93x\x94 caf\xe9").unwrap(), "€ “x” café");
        // The five bytes cp1252 leaves undefined, as MySQL maps them.
        assert_eq!(
            l.decode(&[0x81, 0x8D, 0x8F, 0x90, 0x9D]).unwrap(),
            "\u{81}\u{8D}\u{8F}\u{90}\u{9D}"
        );
        // Valid UTF-8 bytes in a latin1 column are still latin1.
        assert_eq!(l.decode("é".as_bytes()).unwrap(), "Ã©");
    }

    #[test]
    fn wide_sets() {
        let s = "h€llo 😀";
        let be: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let le: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let u32s: Vec<u8> = s.chars().flat_map(|c| (c as u32).to_be_bytes()).collect();
        assert_eq!(Charset::Utf16.decode(&be).unwrap(), s);
        assert_eq!(Charset::Utf16Le.decode(&le).unwrap(), s);
        assert_eq!(Charset::Utf32.decode(&u32s).unwrap(), s);
        assert!(Charset::Ucs2.decode(&be).is_err(), "no surrogates in ucs2");
        let bmp: Vec<u8> = "h€llo".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(Charset::Ucs2.decode(&bmp).unwrap(), "h€llo");
        assert!(Charset::Utf16.decode(&[0]).is_err());
        assert!(Charset::Utf8.decode(b"\xff").is_err());
        assert!(Charset::Ascii.decode(b"\x80").is_err());
    }

    proptest! {
        #[test]
        fn text_round_trips_through_each_set(s in "\\PC{0,20}") {
            prop_assert_eq!(Charset::Utf8.decode(s.as_bytes()).unwrap(), s.clone());
            let be: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
            prop_assert_eq!(Charset::Utf16.decode(&be).unwrap(), s.clone());
            let u32s: Vec<u8> = s.chars().flat_map(|c| (c as u32).to_be_bytes()).collect();
            prop_assert_eq!(Charset::Utf32.decode(&u32s).unwrap(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            for c in [Charset::Utf8, Charset::Latin1, Charset::Ascii, Charset::Ucs2,
                      Charset::Utf16, Charset::Utf16Le, Charset::Utf32] {
                let _ = c.decode(&bytes);
            }
            prop_assert_eq!(Charset::Latin1.decode(&bytes).unwrap().chars().count(), bytes.len());
        }
    }
}

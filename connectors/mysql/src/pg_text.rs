//! PostgreSQL's text forms of arrays, composites and `money`, as the
//! PostgreSQL source carries them ([`callosum_api::Value::Text`]), turned
//! into what a MariaDB/MySQL column of another kind holds: JSON for a JSON
//! column, a decimal number for a numeric column. Pure code, no I/O.
//!
//! - An array (`{1,2,NULL}`, `{"a b",c}`, `{{1,2},{3,4}}`, with or without a
//!   `[2:3]=` bounds prefix) becomes a JSON array, nested per dimension.
//!   Unquoted `NULL` is `null`; elements of numeric arrays (`_int2`,
//!   `_int4`, `_int8`, `_float4`, `_float8`, `_numeric`) that are JSON
//!   numbers become numbers, of `_bool` `true`/`false`, of `_json`/`_jsonb`
//!   the embedded document; every other element is a JSON string of its
//!   text form. `NaN` and `Infinity` stay strings (JSON has no such number).
//! - A composite (`(1,"x y",)`) becomes a JSON array of its fields as
//!   text, in column order, an empty field `null`. Field names would need a
//!   catalog look-up per type in the source; the array keeps the values
//!   exact and ordered.
//! - `money` is printed by PostgreSQL per the server's `lc_monetary`. The
//!   assumption: a locale with `.` as decimal point and `,` as group
//!   separator (`C`, `POSIX`, `en_US`, PostgreSQL's default), a currency
//!   symbol before or after the number, negatives with `-` or in
//!   parentheses. Anything else is refused, not guessed.

use serde_json::Value as Json;

/// Why a text form cannot be parsed. Static text: never the value.
pub type Reason = &'static str;

const BAD_ARRAY: Reason = "is not a PostgreSQL array in text form";
const BAD_COMPOSITE: Reason = "is not a PostgreSQL composite value in text form";
const BAD_MONEY: Reason =
    "is not a money amount in the assumed lc_monetary form (`.` decimal point, `,` groups)";

/// Nesting limit of arrays (PostgreSQL's own is 6 dimensions).
const MAX_DEPTH: usize = 32;

/// How an array's elements become JSON, from the array type's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementKind {
    Number,
    Bool,
    Json,
    Text,
}

impl ElementKind {
    /// From a PostgreSQL array type's name (`_int4`, …).
    pub fn of_array_type(array_type: &str) -> ElementKind {
        match array_type {
            "_int2" | "_int4" | "_int8" | "_float4" | "_float8" | "_numeric" | "_oid" => {
                ElementKind::Number
            }
            "_bool" => ElementKind::Bool,
            "_json" | "_jsonb" => ElementKind::Json,
            _ => ElementKind::Text,
        }
    }
}

/// A parsed array: nested elements, `None` for SQL NULL.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayItem {
    Element(Option<String>),
    Array(Vec<ArrayItem>),
}

/// Whether `source_type` names a PostgreSQL array type whose text form
/// [`parse_array`] reads (`_box` uses `;` between elements: not handled).
pub fn is_array_type(source_type: &str) -> bool {
    source_type.starts_with('_') && source_type != "_box"
}

/// Whether a value of `source_type` in the form `(…)` is a composite. A
/// source type with a text form of that shape that is not a composite is
/// excluded by name: ranges, geometric types, `tid`, text types (whose
/// text is whatever the user stored).
pub fn may_be_composite(source_type: &str, text: &str) -> bool {
    const NOT_COMPOSITE: &[&str] = &[
        "text", "varchar", "bpchar", "name", "citext", "char", "json", "jsonb", "xml", "point",
        "line", "lseg", "box", "path", "polygon", "circle", "tid", "money", "interval", "inet",
        "cidr", "tsvector", "tsquery",
    ];
    text.starts_with('(')
        && text.ends_with(')')
        && !is_array_type(source_type)
        && !source_type.ends_with("range")
        && !NOT_COMPOSITE.contains(&source_type)
}

/// Parses an array's text form (`{…}`, optionally after a `[l:u]…=` bounds
/// prefix) into its nested elements.
pub fn parse_array(text: &str) -> Result<Vec<ArrayItem>, Reason> {
    let mut rest = text.trim();
    if rest.starts_with('[') {
        let eq = rest.find('=').ok_or(BAD_ARRAY)?;
        rest = rest[eq + 1..].trim_start();
    }
    let mut p = Parser {
        s: rest.as_bytes(),
        at: 0,
    };
    let items = p.array(0)?;
    p.skip_spaces();
    if p.at != p.s.len() {
        return Err(BAD_ARRAY);
    }
    Ok(items)
}

/// An array's text form as a JSON document (see the module docs).
pub fn array_to_json(text: &str, kind: ElementKind) -> Result<String, Reason> {
    fn convert(items: Vec<ArrayItem>, kind: ElementKind) -> Json {
        Json::Array(
            items
                .into_iter()
                .map(|item| match item {
                    ArrayItem::Array(inner) => convert(inner, kind),
                    ArrayItem::Element(None) => Json::Null,
                    ArrayItem::Element(Some(s)) => element(s, kind),
                })
                .collect(),
        )
    }
    fn element(s: String, kind: ElementKind) -> Json {
        match kind {
            ElementKind::Number => match serde_json::from_str::<serde_json::Number>(&s) {
                Ok(n) => Json::Number(n),
                Err(_) => Json::String(s),
            },
            ElementKind::Bool => match s.as_str() {
                "t" => Json::Bool(true),
                "f" => Json::Bool(false),
                _ => Json::String(s),
            },
            ElementKind::Json => serde_json::from_str(&s).unwrap_or(Json::String(s)),
            ElementKind::Text => Json::String(s),
        }
    }
    let items = parse_array(text)?;
    Ok(convert(items, kind).to_string())
}

/// Parses a composite's text form `(f1,f2,…)`: its fields, `None` for an
/// empty (NULL) field.
pub fn parse_composite(text: &str) -> Result<Vec<Option<String>>, Reason> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or(BAD_COMPOSITE)?;
    let b = inner.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        // one field, up to the next unquoted comma or the end
        let mut field = Vec::new();
        let mut present = false;
        while i < b.len() && b[i] != b',' {
            present = true;
            match b[i] {
                b'"' => {
                    i += 1;
                    loop {
                        match b.get(i) {
                            None => return Err(BAD_COMPOSITE),
                            Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                                field.push(b'"');
                                i += 2;
                            }
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                field.push(*b.get(i + 1).ok_or(BAD_COMPOSITE)?);
                                i += 2;
                            }
                            Some(&c) => {
                                field.push(c);
                                i += 1;
                            }
                        }
                    }
                }
                b'\\' => {
                    field.push(*b.get(i + 1).ok_or(BAD_COMPOSITE)?);
                    i += 2;
                }
                c => {
                    field.push(c);
                    i += 1;
                }
            }
        }
        let field = String::from_utf8(field).map_err(|_| BAD_COMPOSITE)?;
        fields.push(present.then_some(field));
        if i >= b.len() {
            break;
        }
        i += 1; // the comma
    }
    Ok(fields)
}

/// A composite's text form as a JSON array of its fields as text.
pub fn composite_to_json(text: &str) -> Result<String, Reason> {
    let fields = parse_composite(text)?;
    Ok(Json::Array(
        fields
            .into_iter()
            .map(|f| f.map_or(Json::Null, Json::String))
            .collect(),
    )
    .to_string())
}

/// A `money` text form (`$1,234.56`, `-$0.50`, `($7.00)`) as a plain
/// decimal (`1234.56`, `-0.50`, `-7.00`).
pub fn money_to_decimal(text: &str) -> Result<String, Reason> {
    let mut s = text.trim();
    let mut negative = false;
    if let Some(inner) = s.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        negative = true;
        s = inner.trim();
    }
    if let Some(rest) = s.strip_prefix('-') {
        if negative {
            return Err(BAD_MONEY);
        }
        negative = true;
        s = rest.trim_start();
    }
    // a currency symbol before or after the number (not both)
    let is_number = |c: char| c.is_ascii_digit() || c == '.' || c == ',';
    let start = s.find(is_number).ok_or(BAD_MONEY)?;
    let end = s.rfind(is_number).map(|e| e + 1).ok_or(BAD_MONEY)?;
    let (prefix, number, suffix) = (&s[..start], &s[start..end], &s[end..]);
    let symbol_ok = |sym: &str| {
        !sym.chars()
            .any(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '(' | ')' | '.' | ','))
    };
    if !symbol_ok(prefix) || !symbol_ok(suffix) || (!prefix.is_empty() && !suffix.is_empty()) {
        return Err(BAD_MONEY);
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    // groups of three after the first, separated by commas
    let groups: Vec<&str> = whole.split(',').collect();
    let groups_ok = !groups[0].is_empty()
        && groups[0].len() <= if groups.len() > 1 { 3 } else { usize::MAX }
        && groups.iter().all(|g| g.bytes().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3);
    if !groups_ok {
        return Err(BAD_MONEY);
    }
    if let Some(f) = fraction {
        if f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()) {
            return Err(BAD_MONEY);
        }
    }
    let mut out = String::with_capacity(number.len() + 1);
    if negative {
        out.push('-');
    }
    out.extend(groups);
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Reason> {
        self.skip_spaces();
        if self.s.get(self.at) != Some(&c) {
            return Err(BAD_ARRAY);
        }
        self.at += 1;
        Ok(())
    }

    /// `{item,item,…}` at `self.at`.
    fn array(&mut self, depth: usize) -> Result<Vec<ArrayItem>, Reason> {
        if depth >= MAX_DEPTH {
            return Err(BAD_ARRAY);
        }
        self.expect(b'{')?;
        let mut items = Vec::new();
        self.skip_spaces();
        if self.s.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(items);
        }
        loop {
            self.skip_spaces();
            let item = match self.s.get(self.at) {
                Some(b'{') => ArrayItem::Array(self.array(depth + 1)?),
                Some(b'"') => ArrayItem::Element(Some(self.quoted()?)),
                Some(_) => ArrayItem::Element(self.unquoted()?),
                None => return Err(BAD_ARRAY),
            };
            items.push(item);
            self.skip_spaces();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(items);
                }
                _ => return Err(BAD_ARRAY),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, Reason> {
        self.at += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.s.get(self.at) {
                None => return Err(BAD_ARRAY),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    out.push(*self.s.get(self.at + 1).ok_or(BAD_ARRAY)?);
                    self.at += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| BAD_ARRAY)
    }

    /// An unquoted element: `NULL` (any case) is SQL NULL; trailing spaces
    /// are not part of it.
    fn unquoted(&mut self) -> Result<Option<String>, Reason> {
        let mut out = Vec::new();
        let mut escaped_len = 0;
        loop {
            match self.s.get(self.at) {
                None => return Err(BAD_ARRAY),
                Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err(BAD_ARRAY),
                Some(b'\\') => {
                    out.push(*self.s.get(self.at + 1).ok_or(BAD_ARRAY)?);
                    self.at += 2;
                    escaped_len = out.len();
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
        while out.len() > escaped_len && out.last().is_some_and(u8::is_ascii_whitespace) {
            out.pop();
        }
        if out.is_empty() {
            return Err(BAD_ARRAY);
        }
        if escaped_len == 0 && out.eq_ignore_ascii_case(b"null") {
            return Ok(None);
        }
        String::from_utf8(out).map(Some).map_err(|_| BAD_ARRAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn el(s: &str) -> ArrayItem {
        ArrayItem::Element(Some(s.into()))
    }

    #[test]
    fn arrays_as_postgresql_prints_them() {
        assert_eq!(
            parse_array("{1,2,NULL}").unwrap(),
            vec![el("1"), el("2"), ArrayItem::Element(None)]
        );
        assert_eq!(
            parse_array(r#"{"a b",c,"NULL","x\"y\\z"}"#).unwrap(),
            vec![el("a b"), el("c"), el("NULL"), el("x\"y\\z")]
        );
        assert_eq!(parse_array("{}").unwrap(), vec![]);
        assert_eq!(
            array_to_json("{{1,2},{3,NULL}}", ElementKind::Number).unwrap(),
            "[[1,2],[3,null]]"
        );
        assert_eq!(
            array_to_json("[0:1]={7,8}", ElementKind::Number).unwrap(),
            "[7,8]"
        );
        assert_eq!(
            array_to_json("{1.5,NaN,Infinity}", ElementKind::Number).unwrap(),
            r#"[1.5,"NaN","Infinity"]"#
        );
        assert_eq!(
            array_to_json("{t,f}", ElementKind::Bool).unwrap(),
            "[true,false]"
        );
        assert_eq!(
            array_to_json(r#"{"{\"a\": 1}",2}"#, ElementKind::Json).unwrap(),
            r#"[{"a":1},2]"#
        );
        assert_eq!(
            array_to_json(r#"{"",é,"🎉"}"#, ElementKind::Text).unwrap(),
            r#"["","é","🎉"]"#
        );
        for bad in [
            "", "{", "{1,2", "{1,,2}", "1,2", "{1}x", "{\"a}", "(1,2)", "{a\"b}",
        ] {
            assert!(parse_array(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn composites_as_postgresql_prints_them() {
        assert_eq!(
            parse_composite(r#"(1,"x y",)"#).unwrap(),
            vec![Some("1".into()), Some("x y".into()), None]
        );
        assert_eq!(
            parse_composite(r#"("a""b","c\\d","")"#).unwrap(),
            vec![Some("a\"b".into()), Some("c\\d".into()), Some("".into())]
        );
        assert_eq!(parse_composite("()").unwrap(), vec![None]);
        assert_eq!(
            composite_to_json(r#"(1,"x y",)"#).unwrap(),
            r#"["1","x y",null]"#
        );
        assert!(parse_composite("(1,\"x)").is_err());
        assert!(parse_composite("1,2").is_err());
        assert!(may_be_composite("address", "(1,x)"));
        assert!(!may_be_composite("numrange", "(1,5)"));
        assert!(!may_be_composite("point", "(1,5)"));
        assert!(!may_be_composite("text", "(1,5)"));
        assert!(!may_be_composite("address", "[1,5)"));
    }

    #[test]
    fn money_in_the_assumed_locale() {
        assert_eq!(money_to_decimal("$12.34").unwrap(), "12.34");
        assert_eq!(money_to_decimal("-$1,234.56").unwrap(), "-1234.56");
        assert_eq!(money_to_decimal("($7.00)").unwrap(), "-7.00");
        assert_eq!(
            money_to_decimal("-$92,233,720,368,547,758.08").unwrap(),
            "-92233720368547758.08"
        );
        assert_eq!(money_to_decimal("12,00 €").unwrap_err(), BAD_MONEY);
        assert_eq!(money_to_decimal("0.00").unwrap(), "0.00");
        for bad in [
            "", "$", "$1,23.00", "$1.2.3", "--$1", "$1$", "1.5e3", "$,100", "$1.",
        ] {
            assert!(money_to_decimal(bad).is_err(), "{bad}");
        }
    }

    /// PostgreSQL's array output: an element is quoted when empty, `NULL`
    /// (any case), or holding a delimiter, brace, quote, backslash or space.
    fn to_pg_text(items: &[ArrayItem]) -> String {
        let mut out = String::from("{");
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            match item {
                ArrayItem::Array(inner) => out.push_str(&to_pg_text(inner)),
                ArrayItem::Element(None) => out.push_str("NULL"),
                ArrayItem::Element(Some(s)) => {
                    let quote = s.is_empty()
                        || s.eq_ignore_ascii_case("null")
                        || s.chars().any(|c| {
                            matches!(c, ',' | '{' | '}' | '"' | '\\') || c.is_ascii_whitespace()
                        });
                    if quote {
                        out.push('"');
                        for c in s.chars() {
                            if matches!(c, '"' | '\\') {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                        out.push('"');
                    } else {
                        out.push_str(s);
                    }
                }
            }
        }
        out.push('}');
        out
    }

    fn arb_items() -> impl Strategy<Value = Vec<ArrayItem>> {
        let leaf = prop::option::of("[ -~éß🎉\t]{0,8}|NULL|null").prop_map(ArrayItem::Element);
        let item = leaf.prop_recursive(4, 32, 5, |inner| {
            prop::collection::vec(inner, 0..5).prop_map(ArrayItem::Array)
        });
        prop::collection::vec(item, 0..6)
    }

    /// PostgreSQL's composite output: a field is quoted when empty or
    /// holding `,`, `(`, `)`, `"`, `\` or a space; `"` and `\` doubled.
    fn composite_text(fields: &[Option<String>]) -> String {
        let mut out = String::from("(");
        for (n, f) in fields.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            if let Some(s) = f {
                let quote = s.is_empty()
                    || s.chars().any(|c| {
                        matches!(c, ',' | '(' | ')' | '"' | '\\') || c.is_ascii_whitespace()
                    });
                if quote {
                    out.push('"');
                    for c in s.chars() {
                        if matches!(c, '"' | '\\') {
                            out.push(c);
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str(s);
                }
            }
        }
        out.push(')');
        out
    }

    proptest! {
        #[test]
        fn arrays_round_trip_through_their_text_form(items in arb_items()) {
            let text = to_pg_text(&items);
            prop_assert_eq!(parse_array(&text).unwrap(), items.clone());
            // and the JSON form is valid JSON with the same shape
            let doc: Json = serde_json::from_str(&array_to_json(&text, ElementKind::Text).unwrap()).unwrap();
            prop_assert_eq!(doc.as_array().unwrap().len(), items.len());
        }

        #[test]
        fn composites_round_trip_through_their_text_form(
            fields in prop::collection::vec(prop::option::of("[ -~é🎉]{0,8}"), 1..6)
        ) {
            let text = composite_text(&fields);
            prop_assert_eq!(parse_composite(&text).unwrap(), fields);
        }

        #[test]
        fn money_parses_what_postgresql_prints_in_c_locale(cents in any::<i64>()) {
            // cash_out in the C locale: -$1,234.56
            let abs = (cents as i128).unsigned_abs();
            let whole = (abs / 100).to_string();
            let mut grouped = String::new();
            for (n, c) in whole.chars().enumerate() {
                if n > 0 && (whole.len() - n) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(c);
            }
            let sign = if cents < 0 { "-" } else { "" };
            let text = format!("{sign}${grouped}.{:02}", abs % 100);
            let expect = format!("{sign}{}.{:02}", abs / 100, abs % 100);
            prop_assert_eq!(money_to_decimal(&text).unwrap(), expect);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_array(&s);
            let _ = parse_composite(&s);
            let _ = money_to_decimal(&s);
        }
    }
}

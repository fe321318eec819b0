use super::*;
use proptest::prelude::*;

const NAMES: [&str; 3] = ["amount", "stage", "active"];

fn bound(text: &str) -> Filter<usize> {
    parse(text)
        .unwrap()
        .bind(&|c| NAMES.iter().position(|n| *n == c))
        .unwrap()
}

fn row(amount: Option<i64>, stage: Option<&str>, active: Option<bool>) -> Vec<Value> {
    vec![
        amount.map_or(Value::Null, Value::Int),
        stage.map_or(Value::Null, |s| Value::Text(s.into())),
        active.map_or(Value::Null, Value::Bool),
    ]
}

#[test]
fn parses_the_supported_forms() {
    let f = parse("stage = 'won' AND amount > 0").unwrap();
    assert_eq!(f.columns(), vec!["stage", "amount"]);
    let f = parse("0 < amount").unwrap();
    assert_eq!(
        f,
        Filter::Compare {
            column: "amount".into(),
            op: CmpOp::Gt,
            literal: Literal::Number("0".into())
        }
    );
    assert!(parse("amount >= -1.5 OR NOT (stage IN ('a', 'b')) OR stage IS NOT NULL").is_ok());
    assert!(parse("active").is_ok());
    assert!(parse("\"Stage\" = 'x'").unwrap().columns() == vec!["Stage"]);
}

#[test]
fn refuses_what_it_cannot_evaluate() {
    for text in [
        "stage = 'won' garbage",
        "stage = ",
        "lower(stage) = 'won'",
        "amount + 1 > 2",
        "stage = other",
        "amount IN (SELECT 1)",
        "t.stage = 'won'",
        "amount > 1e3",
        "stage LIKE 'w%'",
    ] {
        assert!(parse(text).is_err(), "{text}");
    }
    let deep = format!("{}amount > 0{}", "(".repeat(200), ")".repeat(200));
    assert!(parse(&deep).is_err());
}

#[test]
fn binding_names_the_unknown_column() {
    let err = parse("stage = 'won' AND nope = 1")
        .unwrap()
        .bind(&|c| NAMES.iter().position(|n| *n == c))
        .unwrap_err();
    assert_eq!(err, "nope");
}

#[test]
fn three_valued_logic() {
    let f = bound("stage = 'won' AND amount > 0");
    assert_eq!(
        f.eval(&row(Some(5), Some("won"), None), &NAMES),
        Ok(Some(true))
    );
    assert_eq!(f.eval(&row(None, Some("won"), None), &NAMES), Ok(None));
    assert_eq!(
        f.eval(&row(None, Some("lost"), None), &NAMES),
        Ok(Some(false))
    );
    let f = bound("amount NOT IN (1, NULL)");
    assert_eq!(f.eval(&row(Some(2), None, None), &NAMES), Ok(None));
    assert_eq!(f.eval(&row(Some(1), None, None), &NAMES), Ok(Some(false)));
    let f = bound("stage IS NULL");
    assert_eq!(f.eval(&row(None, None, None), &NAMES), Ok(Some(true)));
}

#[test]
fn numbers_compare_exactly_across_kinds() {
    let f = bound("amount > 0.5");
    let names = ["amount"];
    let cases = [
        (Value::Decimal("0.50".into()), Some(false)),
        (Value::Decimal("0.5000001".into()), Some(true)),
        (Value::Decimal("-3".into()), Some(false)),
        (Value::Decimal("NaN".into()), Some(true)),
        (Value::UInt(u64::MAX), Some(true)),
        (Value::Float(0.25), Some(false)),
        (Value::Int(1), Some(true)),
    ];
    for (value, expected) in cases {
        assert_eq!(
            f.eval(std::slice::from_ref(&value), &names),
            Ok(expected),
            "{value:?}"
        );
    }
    assert_eq!(cmp_decimal("-0.0", "0"), Ordering::Equal);
    assert_eq!(cmp_decimal("-10", "-9.99"), Ordering::Less);
    assert_eq!(cmp_decimal("007.10", "7.1"), Ordering::Equal);
}

#[test]
fn dates_and_timestamps_compare_with_iso_strings() {
    let names = ["at"];
    let f = bound_one("at >= '2024-01-31'", "at");
    let d = NaiveDate::from_ymd_opt(2024, 2, 1).unwrap();
    assert_eq!(f.eval(&[Value::Date(d)], &names), Ok(Some(true)));
    let ts = d.and_hms_opt(0, 0, 0).unwrap();
    assert_eq!(f.eval(&[Value::Timestamp(ts)], &names), Ok(Some(true)));
    assert_eq!(
        f.eval(&[Value::TimestampTz(ts.and_utc())], &names),
        Ok(Some(true))
    );
    let f = bound_one("at < '2024-02-01 00:00:00+01'", "at");
    assert_eq!(
        f.eval(&[Value::TimestampTz(ts.and_utc())], &names),
        Ok(Some(false))
    );
}

fn bound_one(text: &str, name: &str) -> Filter<usize> {
    parse(text)
        .unwrap()
        .bind(&|c| (c == name).then_some(0))
        .unwrap()
}

#[test]
fn unchanged_and_mismatched_values_are_refused_by_column() {
    let f = bound("stage = 'won' OR amount > 0");
    let mut r = row(Some(1), Some("won"), None);
    r[1] = Value::Unchanged;
    assert_eq!(
        f.eval(&r, &NAMES),
        Err(FilterEvalError::Unchanged {
            column: "stage".into()
        })
    );
    let f = bound("amount = 'x' OR stage = 'won'");
    let err = f
        .eval(&row(Some(1), Some("won"), None), &NAMES)
        .unwrap_err();
    assert!(err.to_string().contains("`amount`"), "{err}");
    let secret = "s3cr3t";
    let f = bound("stage > 1");
    let err = f.eval(&row(None, Some(secret), None), &NAMES).unwrap_err();
    assert!(!err.to_string().contains(secret));
}

/// A filter over `amount` (int), `stage` (text) and `active` (bool) as
/// the model sees it.
#[derive(Clone, Debug)]
enum Model {
    And(Box<Model>, Box<Model>),
    Or(Box<Model>, Box<Model>),
    Not(Box<Model>),
    Amount(CmpOp, Option<i64>),
    Stage(CmpOp, Option<&'static str>),
    AmountIn(Vec<Option<i64>>, bool),
    IsNull(usize, bool),
    Active,
}

const STAGES: [&str; 3] = ["lost", "open", "won"];

fn op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::NotEq),
        Just(CmpOp::Lt),
        Just(CmpOp::LtEq),
        Just(CmpOp::Gt),
        Just(CmpOp::GtEq)
    ]
}

fn model() -> impl Strategy<Value = Model> {
    let int = prop::option::weighted(0.9, -3i64..3);
    let stage = prop::option::weighted(0.9, prop::sample::select(STAGES.to_vec()));
    let leaf = prop_oneof![
        (op(), int.clone()).prop_map(|(o, v)| Model::Amount(o, v)),
        (op(), stage).prop_map(|(o, v)| Model::Stage(o, v)),
        (prop::collection::vec(int, 1..4), any::<bool>()).prop_map(|(l, n)| Model::AmountIn(l, n)),
        (0usize..3, any::<bool>()).prop_map(|(c, n)| Model::IsNull(c, n)),
        Just(Model::Active),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Model::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Model::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Model::Not(Box::new(a))),
        ]
    })
}

fn op_sql(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::NotEq => "<>",
        CmpOp::Lt => "<",
        CmpOp::LtEq => "<=",
        CmpOp::Gt => ">",
        CmpOp::GtEq => ">=",
    }
}

fn int_sql(v: Option<i64>) -> String {
    v.map_or("NULL".into(), |v| v.to_string())
}

fn sql(m: &Model) -> String {
    match m {
        Model::And(a, b) => format!("({} AND {})", sql(a), sql(b)),
        Model::Or(a, b) => format!("({} OR {})", sql(a), sql(b)),
        Model::Not(a) => format!("NOT ({})", sql(a)),
        Model::Amount(o, v) => format!("amount {} {}", op_sql(*o), int_sql(*v)),
        Model::Stage(o, v) => format!(
            "stage {} {}",
            op_sql(*o),
            v.map_or("NULL".into(), |s| format!("'{s}'"))
        ),
        Model::AmountIn(list, negated) => format!(
            "amount {}IN ({})",
            if *negated { "NOT " } else { "" },
            list.iter()
                .map(|v| int_sql(*v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Model::IsNull(c, negated) => {
            format!(
                "{} IS {}NULL",
                NAMES[*c],
                if *negated { "NOT " } else { "" }
            )
        }
        Model::Active => "active".into(),
    }
}

type ModelRow = (Option<i64>, Option<&'static str>, Option<bool>);

fn cmp_model<T: Ord>(o: CmpOp, a: Option<T>, b: Option<T>) -> Option<bool> {
    let (a, b) = (a?, b?);
    Some(match o {
        CmpOp::Eq => a == b,
        CmpOp::NotEq => a != b,
        CmpOp::Lt => a < b,
        CmpOp::LtEq => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::GtEq => a >= b,
    })
}

/// SQL's three-valued logic, written out.
fn eval_model(m: &Model, r: &ModelRow) -> Option<bool> {
    match m {
        Model::And(a, b) => match (eval_model(a, r), eval_model(b, r)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Model::Or(a, b) => match (eval_model(a, r), eval_model(b, r)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Model::Not(a) => eval_model(a, r).map(|b| !b),
        Model::Amount(o, v) => cmp_model(*o, r.0, *v),
        Model::Stage(o, v) => cmp_model(*o, r.1, *v),
        Model::AmountIn(list, negated) => {
            let hits: Vec<Option<bool>> =
                list.iter().map(|v| cmp_model(CmpOp::Eq, r.0, *v)).collect();
            let any = if hits.contains(&Some(true)) {
                Some(true)
            } else if hits.contains(&None) {
                None
            } else {
                Some(false)
            };
            if *negated {
                any.map(|b| !b)
            } else {
                any
            }
        }
        Model::IsNull(c, negated) => {
            let null = match c {
                0 => r.0.is_none(),
                1 => r.1.is_none(),
                _ => r.2.is_none(),
            };
            Some(null != *negated)
        }
        Model::Active => r.2,
    }
}

proptest! {
    #[test]
    fn evaluation_matches_sql_three_valued_logic(
        m in model(),
        rows in prop::collection::vec((
            prop::option::weighted(0.8, -3i64..3),
            prop::option::weighted(0.8, prop::sample::select(STAGES.to_vec())),
            prop::option::weighted(0.8, any::<bool>()),
        ), 1..8),
    ) {
        let text = sql(&m);
        let f = bound(&text);
        for r in &rows {
            let got = f.eval(&row(r.0, r.1, r.2), &NAMES);
            prop_assert_eq!(got, Ok(eval_model(&m, r)), "{}", text);
        }
    }
}

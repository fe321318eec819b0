use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn source_schema() -> Arc<TableSchema> {
    let col = |name: &str, ty: &str, is_key| ColumnSchema {
        name: name.into(),
        source_type: ty.into(),
        is_key,
    };
    Arc::new(TableSchema {
        table: TableId::new("public", "opportunities"),
        columns: vec![
            col("id", "int8", true),
            col("stage", "text", false),
            col("amount", "int8", false),
            col("note", "text", false),
        ],
    })
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn map(unmatched: Unmatched, default: Option<Value>) -> TableMap {
    let words = [
        ("won", "confirmed"),
        ("lost", "cancelled"),
        ("open", "open"),
    ];
    TableMap {
        source: TableId::new("public", "opportunities"),
        target: TableId::new("erp", "sales_orders"),
        filter: Some((
            "stage = 'won' AND amount > 0".into(),
            filter::parse("stage = 'won' AND amount > 0").unwrap(),
        )),
        unmatched,
        columns: vec![
            ColumnRule {
                source: "id".into(),
                target: "crm_opportunity_id".into(),
                values: None,
            },
            ColumnRule {
                source: "amount".into(),
                target: "total".into(),
                values: None,
            },
            ColumnRule {
                source: "stage".into(),
                target: "status".into(),
                values: Some(ValueMap {
                    values: words
                        .iter()
                        .map(|(k, v)| (k.to_string(), text(v)))
                        .collect(),
                    default,
                }),
            },
        ],
        constants: vec![("source_system".into(), text("crm"))],
        key: None,
    }
}

fn source_row(id: i64, stage: &str, amount: i64) -> Row {
    vec![Value::Int(id), text(stage), Value::Int(amount), text("n")]
}

fn changes(compiled: &CompiledMap, change: RowChange) -> Result<Vec<RowChange>, ConnectorError> {
    let mut out = Vec::new();
    compiled.transform(&change, &mut out)?;
    Ok(out.into_iter().map(|e| e.change).collect())
}

#[test]
fn compiles_a_target_shaped_schema() {
    let compiled = map(Unmatched::Delete, None)
        .compile(&source_schema())
        .unwrap();
    let target = compiled.target_schema();
    assert_eq!(target.table, TableId::new("erp", "sales_orders"));
    let names: Vec<_> = target
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key))
        .collect();
    assert_eq!(
        names,
        vec![
            ("crm_opportunity_id", true),
            ("total", false),
            ("status", false),
            ("source_system", false)
        ]
    );
    assert_eq!(target.columns[1].source_type, "int8");
}

#[test]
fn follows_the_row_filter_rules_for_each_change() {
    let c = map(Unmatched::Delete, None)
        .compile(&source_schema())
        .unwrap();
    let won = source_row(7, "won", 10);
    let mapped = vec![
        Value::Int(7),
        Value::Int(10),
        text("confirmed"),
        text("crm"),
    ];
    let key = vec![Value::Int(7), Value::Null, Value::Null, Value::Null];
    assert_eq!(
        changes(&c, RowChange::Insert { row: won.clone() }).unwrap(),
        vec![RowChange::Insert {
            row: mapped.clone()
        }]
    );
    assert!(changes(
        &c,
        RowChange::Insert {
            row: source_row(7, "open", 10)
        }
    )
    .unwrap()
    .is_empty());
    assert_eq!(
        changes(
            &c,
            RowChange::Update {
                old_key: None,
                row: won.clone()
            }
        )
        .unwrap(),
        vec![RowChange::Update {
            old_key: None,
            row: mapped.clone()
        }]
    );
    let lost = RowChange::Update {
        old_key: None,
        row: source_row(7, "lost", 10),
    };
    assert_eq!(
        changes(&c, lost.clone()).unwrap(),
        vec![RowChange::Delete { key: key.clone() }]
    );
    let kept = map(Unmatched::Keep, None)
        .compile(&source_schema())
        .unwrap();
    assert!(changes(&kept, lost).unwrap().is_empty());
    assert_eq!(
        changes(
            &kept,
            RowChange::Delete {
                key: source_row(7, "x", 0)
            }
        )
        .unwrap(),
        vec![RowChange::Delete { key: key.clone() }]
    );
    // a key change: the old key's row goes, the new one is upserted
    let mut old = vec![Value::Null; 4];
    old[0] = Value::Int(6);
    let moved = changes(
        &c,
        RowChange::Update {
            old_key: Some(old),
            row: won,
        },
    )
    .unwrap();
    let mut old_key = key.clone();
    old_key[0] = Value::Int(6);
    assert_eq!(
        moved,
        vec![
            RowChange::Delete { key: old_key },
            RowChange::Update {
                old_key: None,
                row: mapped
            }
        ]
    );
    let err = changes(&c, RowChange::Truncate).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conversion);
}

#[test]
fn a_value_without_mapping_is_refused_by_table_and_column_not_value() {
    let c = map(Unmatched::Delete, None)
        .compile(&source_schema())
        .unwrap();
    // `open` is mapped but not matched; an unknown word in a matching row
    let mut row = source_row(1, "won", 5);
    let f = map(Unmatched::Delete, None);
    let no_filter = TableMap { filter: None, ..f }
        .compile(&source_schema())
        .unwrap();
    row[1] = text("s3cr3t_word");
    let err = changes(&no_filter, RowChange::Insert { row: row.clone() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conversion);
    let message = format!("{} {}", err.message, err.hint.clone().unwrap_or_default());
    assert!(
        message.contains("`stage`") && message.contains("public.opportunities"),
        "{message}"
    );
    assert!(message.contains("missing from `values`"), "{message}");
    assert!(!message.contains("s3cr3t_word"), "{message}");
    // with a default it maps
    let d = TableMap {
        filter: None,
        ..map(Unmatched::Delete, Some(text("open")))
    }
    .compile(&source_schema())
    .unwrap();
    let out = changes(&d, RowChange::Insert { row }).unwrap();
    assert_eq!(
        out,
        vec![RowChange::Insert {
            row: vec![Value::Int(1), Value::Int(5), text("open"), text("crm")]
        }]
    );
    // an unchanged filter column is refused by name
    let mut row = source_row(1, "won", 5);
    row[2] = Value::Unchanged;
    let err = changes(&c, RowChange::Update { old_key: None, row }).unwrap_err();
    assert!(err.message.contains("`amount`"), "{}", err.message);
}

#[test]
fn refuses_maps_that_do_not_fit_the_source() {
    let mut m = map(Unmatched::Delete, None);
    m.columns[1].source = "amt".into();
    assert!(m
        .compile(&source_schema())
        .unwrap_err()
        .message
        .contains("`amt`"));
    let mut m = map(Unmatched::Delete, None);
    m.key = Some(vec!["total".into()]);
    let err = m.compile(&source_schema()).unwrap_err();
    assert!(err.message.contains("source key"), "{}", err.message);
    let mut m = map(Unmatched::Delete, None);
    m.filter = Some(("nope = 1".into(), filter::parse("nope = 1").unwrap()));
    assert!(m
        .compile(&source_schema())
        .unwrap_err()
        .message
        .contains("`nope`"));
    let mut m = map(Unmatched::Delete, None);
    m.columns.push(ColumnRule {
        source: "note".into(),
        target: "total".into(),
        values: None,
    });
    m.constants.push(("status".into(), text("x")));
    m.key = Some(vec!["status".into(), "nope".into()]);
    let problems = m.validate();
    assert!(problems.contains(&MapError::TargetTwice("total".into())));
    assert!(problems.contains(&MapError::ConstantIsMapped("status".into())));
    assert!(problems.contains(&MapError::KeyValueMapped("status".into())));
    assert!(problems.contains(&MapError::KeyNotMapped("nope".into())));
}

#[test]
fn maps_compile_once_per_source_schema_and_refuse_unmapped_tables() {
    let mut maps = TableMaps::new([map(Unmatched::Delete, None)]);
    let schema = source_schema();
    let event = ChangeEvent {
        schema: schema.clone(),
        change: RowChange::Insert {
            row: source_row(1, "won", 3),
        },
    };
    let mut out = Vec::new();
    maps.transform(&[event.clone(), event], &mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert!(Arc::ptr_eq(&out[0].schema, &out[1].schema));
    let other = ChangeEvent {
        schema: Arc::new(TableSchema {
            table: TableId::new("public", "other"),
            columns: schema.columns.clone(),
        }),
        change: RowChange::Truncate,
    };
    assert_eq!(
        maps.transform(&[other], &mut out).unwrap_err().kind,
        ErrorKind::Schema
    );
}

#[derive(Clone, Debug)]
enum Op {
    Insert(i64, &'static str, i64),
    Update(i64, &'static str, i64, Option<i64>),
    Delete(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let stage = prop::sample::select(vec!["won", "lost", "open"]);
    prop_oneof![
        (0i64..6, stage.clone(), -2i64..3).prop_map(|(k, s, a)| Op::Insert(k, s, a)),
        (
            0i64..6,
            stage,
            -2i64..3,
            prop::option::weighted(0.2, 0i64..6)
        )
            .prop_map(|(k, s, a, n)| Op::Update(k, s, a, n)),
        (0i64..6).prop_map(Op::Delete),
    ]
}

/// Applies target changes to a model target keyed by the target key.
fn apply(target: &mut BTreeMap<i64, Row>, change: RowChange) {
    let key = |row: &Row| match row[0] {
        Value::Int(k) => k,
        _ => panic!("key"),
    };
    match change {
        RowChange::Insert { row } | RowChange::Update { old_key: None, row } => {
            target.insert(key(&row), row);
        }
        RowChange::Delete { key: k } => {
            target.remove(&key(&k));
        }
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    /// Applying the transformed changes to a model target gives the
    /// filtered, renamed and value-mapped source (with `keep`: at least
    /// that, and rows that stopped matching as they were last carried).
    #[test]
    fn transformed_changes_keep_the_target_equal_to_the_mapped_source(
        ops in prop::collection::vec(op(), 0..40),
        keep in any::<bool>(),
    ) {
        let unmatched = if keep { Unmatched::Keep } else { Unmatched::Delete };
        let compiled = map(unmatched, None).compile(&source_schema()).unwrap();
        let mut source: BTreeMap<i64, (&str, i64)> = BTreeMap::new();
        let mut target = BTreeMap::new();
        let mut ever = std::collections::BTreeSet::new();
        for op in ops {
            let change = match op {
                Op::Insert(k, s, a) if !source.contains_key(&k) => {
                    source.insert(k, (s, a));
                    RowChange::Insert { row: source_row(k, s, a) }
                }
                Op::Insert(..) => continue,
                Op::Update(k, s, a, new_key) if source.contains_key(&k) => {
                    let old_key = match new_key {
                        Some(n) if n != k && !source.contains_key(&n) => {
                            source.remove(&k);
                            let mut old = vec![Value::Null; 4];
                            old[0] = Value::Int(k);
                            Some((n, old))
                        }
                        _ => None,
                    };
                    let id = old_key.as_ref().map_or(k, |(n, _)| *n);
                    source.insert(id, (s, a));
                    RowChange::Update { old_key: old_key.map(|(_, o)| o), row: source_row(id, s, a) }
                }
                Op::Update(..) => continue,
                Op::Delete(k) => {
                    source.remove(&k);
                    let mut key = vec![Value::Null; 4];
                    key[0] = Value::Int(k);
                    RowChange::Delete { key }
                }
            };
            for c in changes(&compiled, change).unwrap() {
                apply(&mut target, c);
            }
            for (&k, &(s, a)) in &source {
                if s == "won" && a > 0 {
                    ever.insert(k);
                }
            }
        }
        let expected: BTreeMap<i64, Row> = source
            .iter()
            .filter(|(_, (s, a))| *s == "won" && *a > 0)
            .map(|(&k, &(_, a))| (k, vec![Value::Int(k), Value::Int(a), text("confirmed"), text("crm")]))
            .collect();
        if keep {
            for (k, row) in &expected {
                prop_assert_eq!(target.get(k), Some(row));
            }
            for k in target.keys() {
                prop_assert!(ever.contains(k) && (source.contains_key(k) || !expected.contains_key(k)));
            }
        } else {
            prop_assert_eq!(target, expected);
        }
    }
}

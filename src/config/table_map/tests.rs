use super::*;

/// A CRM (PostgreSQL) → ERP (MariaDB) config with `maps` as its
/// pipeline's maps.
fn config(maps: &str) -> String {
    format!(
        r#"data_dir = "/tmp/callosum"

[stores.crm]
kind = "postgres"
url = "postgres://callosum@127.0.0.1:5432/crm"

[stores.erp]
kind = "mysql"
url = "mysql://callosum@127.0.0.1:3306/erp"
server_id = 4201

[[pipelines]]
name = "crm_to_erp"
from = "crm"
to = "erp"
{maps}"#
    )
}

const ORDERS: &str = r#"
[[pipelines.maps]]
source = "opportunities"
target = "sales_orders"
where = "stage = 'won' AND amount > 0"
unmatched = "keep"
[pipelines.maps.columns]
id = "crm_opportunity_id"
amount = "total"
stage = { to = "status", values = { won = "confirmed", lost = 9 }, default = "open" }
[pipelines.maps.constants]
source_system = "crm"
"#;

fn parse_error(text: &str) -> (String, Option<usize>) {
    match Config::from_toml(text) {
        Err(err @ ConfigError::Parse { line, .. }) => (err.to_string(), line),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn invalid(text: &str) -> Vec<ConfigProblem> {
    match Config::from_toml(text) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn a_map_resolves_its_tables_and_columns() {
    let config = Config::from_toml(&config(ORDERS)).unwrap();
    let p = &config.pipelines[0];
    let (from, to) = (&config.stores["crm"], &config.stores["erp"]);
    assert_eq!(
        p.source_tables(from),
        vec![TableId::new("public", "opportunities")]
    );
    let maps = p.table_maps(from, to);
    let m = &maps[0];
    assert_eq!(m.target, TableId::new("erp", "sales_orders"));
    assert_eq!(m.unmatched, Unmatched::Keep);
    assert_eq!(m.filter.as_ref().unwrap().0, "stage = 'won' AND amount > 0");
    let stage = m.columns.iter().find(|c| c.source == "stage").unwrap();
    assert_eq!(stage.target, "status");
    let values = stage.values.as_ref().unwrap();
    assert_eq!(values.values["lost"], Value::Int(9));
    assert_eq!(values.default, Some(Value::Text("open".into())));
    assert_eq!(
        m.constants,
        vec![("source_system".into(), Value::Text("crm".into()))]
    );
    assert_eq!(
        p.sink_tables(from, to),
        vec![(m.target.clone(), m.target.clone())]
    );
}

#[test]
fn a_filter_that_does_not_parse_is_reported_at_its_map() {
    let text = config(&ORDERS.replace("amount > 0", "amount >"));
    let (message, line) = parse_error(&text);
    // the [[pipelines.maps]] table starts on line 17
    assert!(line.is_some_and(|l| l >= 17), "{message}");
    assert!(
        message.contains("`opportunities` → `sales_orders`"),
        "{message}"
    );
    assert!(message.contains("`where`"), "{message}");
    let (message, _) = parse_error(&config(&ORDERS.replace("amount > 0", "lower(stage) = 'x'")));
    assert!(message.contains("not supported"), "{message}");
}

#[test]
fn a_map_that_writes_a_column_twice_or_keys_a_constant_is_refused() {
    let twice = ORDERS.replace("amount = \"total\"", "amount = \"crm_opportunity_id\"");
    let (message, line) = parse_error(&config(&twice));
    assert!(line.is_some(), "{message}");
    assert!(
        message.contains("`crm_opportunity_id` is written twice"),
        "{message}"
    );
    let constant = ORDERS.replace("source_system = \"crm\"", "total = 1");
    let (message, _) = parse_error(&config(&constant));
    assert!(
        message.contains("constant `total` is also a mapped column"),
        "{message}"
    );
    let key = ORDERS.replace("unmatched = \"keep\"", "key = [\"status\"]");
    let (message, _) = parse_error(&config(&key));
    assert!(
        message.contains("key column `status` has a value map"),
        "{message}"
    );
    let unknown = ORDERS.replace("unmatched = \"keep\"", "unmatch = \"keep\"");
    let (message, _) = parse_error(&config(&unknown));
    assert!(message.contains("unmatch"), "{message}");
}

#[test]
fn maps_across_a_pipeline_are_checked_by_key() {
    let twice = format!("{ORDERS}{}", ORDERS.replace("sales_orders", "erp.orders2"));
    let problems = invalid(&config(&twice));
    assert!(
        problems
            .iter()
            .any(|p| p.key == "pipelines[0].maps[1].source" && p.problem.contains("crm_to_erp")),
        "{problems:?}"
    );
    let both = config(&format!("tables = [\"accounts\"]\n{ORDERS}"));
    let problems = invalid(&both);
    assert!(
        problems
            .iter()
            .any(|p| p.key == "pipelines[0].tables" && p.problem.contains("either")),
        "{problems:?}"
    );
    let neither = invalid(&config(""));
    assert!(
        neither.iter().any(|p| p.key == "pipelines[0].tables"),
        "{neither:?}"
    );
}

#[test]
fn the_sample_crm_erp_config_parses_and_validates() {
    let config = Config::from_toml(include_str!("../../../deploy/crm-erp.toml")).unwrap();
    let (crm, erp) = (&config.stores["crm"], &config.stores["erp"]);
    let to_erp = &config.pipelines[0];
    assert_eq!(to_erp.maps.len(), 3);
    assert_eq!(
        to_erp.sink_tables(crm, erp)[1].0,
        TableId::new("erp", "sales_orders")
    );
    let to_crm = &config.pipelines[1];
    assert_eq!(
        to_crm.source_tables(erp),
        vec![
            TableId::new("erp", "warehouse_stock"),
            TableId::new("erp", "invoices")
        ]
    );
}

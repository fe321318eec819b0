use super::*;

const EXAMPLE: &str = include_str!("../../deploy/callosum.example.toml");

/// A valid two-store, one-pipeline config with `extra` appended.
fn base(extra: &str) -> String {
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
tables = ["public.accounts", "orders"]
{extra}"#
    )
}

#[test]
fn echo_origins_keep_only_writes_that_go_on_to_a_third_store() {
    let two = parse_only(&base(
        "\n[[pipelines]]\nname = \"erp_to_crm\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"stock\"]\n",
    ));
    assert!(two.echo_origins("crm").is_empty());
    assert!(two.echo_origins("erp").is_empty());
    let three = parse_only(&base(
        "\n[[pipelines]]\nname = \"erp_to_crm\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"stock\"]\n\
         \n[[pipelines]]\nname = \"crm_to_wh\"\nfrom = \"crm\"\nto = \"wh\"\ntables = [\"stock\"]\n",
    ));
    assert_eq!(
        three.echo_origins("crm"),
        vec![("erp_to_crm".to_string(), "erp".to_string())]
    );
    // every reader of the erp sends to the crm, where its writes came from
    assert!(three.echo_origins("erp").is_empty());
}

/// Parses without validating.
fn parse_only(text: &str) -> Config {
    toml::from_str(text).expect("config parses")
}

fn problems(config: &Config) -> Vec<ConfigProblem> {
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn assert_problem(config: &Config, key: &str, needle: &str) {
    let problems = problems(config);
    assert!(
        problems
            .iter()
            .any(|p| p.key == key && p.problem.contains(needle)),
        "expected a problem at `{key}` containing `{needle}`, got {problems:#?}"
    );
}

fn parse_error(text: &str) -> (String, Option<usize>) {
    match Config::from_toml(text) {
        Err(err @ ConfigError::Parse { line, .. }) => (err.to_string(), line),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn example_file_parses_and_validates() {
    let config = Config::from_toml(EXAMPLE).expect("example config is valid");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/callosum"));
    assert_eq!(config.http.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(config.stores.len(), 2);
    let StoreConfig::Postgres(crm) = &config.stores["crm"] else {
        panic!("crm is postgres")
    };
    assert_eq!(crm.password_env.as_deref(), Some("CALLOSUM_CRM_PASSWORD"));
    assert_eq!(crm.slot_name("crm"), "callosum_crm");
    let StoreConfig::Mysql(erp) = &config.stores["erp"] else {
        panic!("erp is mysql")
    };
    assert_eq!(erp.server_id, 4201);
    assert_eq!(erp.zero_dates, ZeroDates::Error);
    assert_eq!(config.pipelines.len(), 2);
    let p = &config.pipelines[0];
    assert_eq!(
        (p.name.as_str(), p.from.as_str(), p.to.as_str()),
        ("crm_to_erp", "crm", "erp")
    );
    assert_eq!(p.on_error, OnError::DeadLetter);
    assert_eq!(p.max_batch_events, DEFAULT_MAX_BATCH_EVENTS);
    assert_eq!(config.pipelines[1].on_error, OnError::Halt);
    let mapping = config.pipelines[1].table_mapping(&config.stores["erp"], &config.stores["crm"]);
    assert_eq!(
        mapping,
        vec![
            (
                TableId::new("erp", "stock_levels"),
                TableId::new("public", "stock_levels")
            ),
            (
                TableId::new("erp", "invoices"),
                TableId::new("public", "invoices")
            ),
        ]
    );
}

#[test]
fn defaults_apply() {
    let config = Config::from_toml(&base("")).unwrap();
    assert_eq!(config.http, HttpConfig::default());
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9464");
    let p = &config.pipelines[0];
    assert_eq!(p.on_error, OnError::DeadLetter);
    assert_eq!(p.max_batch_events, 5000);
}

#[test]
fn unknown_top_level_key_names_key_and_line() {
    let text = format!("datadir = \"x\"\n{}", base(""));
    let (message, line) = parse_error(&text);
    assert_eq!(line, Some(1));
    assert!(message.contains("unknown field `datadir`"), "{message}");
    assert!(message.contains("line 1, column 1"), "{message}");
}

#[test]
fn unknown_store_key_names_key_and_line() {
    let text = base("").replace("server_id = 4201", "server_id = 4201\nserverid = 1");
    let (message, line) = parse_error(&text);
    assert!(message.contains("unknown field `serverid`"), "{message}");
    assert!(message.contains("line 11, column 1"), "{message}");
    assert_eq!(line, Some(11));
    let text = base("").replace(
        "url = \"postgres://callosum@127.0.0.1:5432/crm\"",
        "url = \"postgres://callosum@127.0.0.1:5432/crm\"\nslto = \"x\"",
    );
    let (message, line) = parse_error(&text);
    assert!(message.contains("unknown field `slto`"), "{message}");
    assert_eq!(line, Some(6));
}

#[test]
fn unknown_pipeline_and_http_keys_name_key_and_line() {
    let (message, line) = parse_error(&base("batch = 3\n"));
    assert!(message.contains("unknown field `batch`"), "{message}");
    assert_eq!(line, Some(17));
    let (message, line) = parse_error(&format!("{}\n[http]\nport = 1\n", base("")));
    assert!(message.contains("unknown field `port`"), "{message}");
    assert_eq!(line, Some(19));
}

#[test]
fn key_of_the_other_store_kind_is_rejected_with_table_line() {
    let text = base("").replace("server_id = 4201", "server_id = 4201\nslot = \"s\"");
    let (message, line) = parse_error(&text);
    assert!(message.contains("`slot`"), "{message}");
    assert!(message.contains("only to kind = \"postgres\""), "{message}");
    assert_eq!(line, Some(7), "line of [stores.erp]: {message}");
    let text = base("").replace("kind = \"postgres\"", "kind = \"postgres\"\nserver_id = 3");
    let (message, _) = parse_error(&text);
    assert!(message.contains("`server_id`"), "{message}");
}

#[test]
fn mysql_store_requires_server_id_and_unknown_kind_is_rejected() {
    let (message, _) = parse_error(&base("").replace("server_id = 4201\n", ""));
    assert!(message.contains("server_id"), "{message}");
    let (message, line) = parse_error(&base("").replace("kind = \"mysql\"", "kind = \"oracle\""));
    assert!(message.contains("unknown variant `oracle`"), "{message}");
    assert_eq!(line, Some(8));
}

#[test]
fn time_zone_defaults_to_utc_parses_and_names_its_key_when_wrong() {
    let zone = |config: &Config| match &config.stores["erp"] {
        StoreConfig::Mysql(erp) => erp.time_zone,
        other => panic!("erp is mysql: {other:?}"),
    };
    assert_eq!(zone(&Config::from_toml(&base("")).unwrap()), None);
    let with = |name: &str| {
        base("").replace(
            "server_id = 4201",
            &format!("server_id = 4201\ntime_zone = \"{name}\""),
        )
    };
    assert_eq!(zone(&Config::from_toml(&with("UTC")).unwrap()), None);
    assert_eq!(
        zone(&Config::from_toml(&with("Europe/Berlin")).unwrap()),
        Some(chrono_tz::Europe::Berlin)
    );
    let (message, _) = parse_error(&with("Mars/Olympus"));
    assert!(message.contains("`time_zone`"), "{message}");
    assert!(message.contains("Mars/Olympus"), "{message}");
    let text = base("")
        .replace("kind = \"mysql\"", "kind = \"postgres\"")
        .replace("server_id = 4201", "time_zone = \"UTC\"");
    let (message, _) = parse_error(&text);
    assert!(message.contains("`time_zone`"), "{message}");
}

#[test]
fn zero_dates_defaults_to_error_parses_and_names_its_key_when_wrong() {
    let zero_dates = |config: &Config| match &config.stores["erp"] {
        StoreConfig::Mysql(erp) => erp.zero_dates,
        other => panic!("erp is mysql: {other:?}"),
    };
    assert_eq!(
        zero_dates(&Config::from_toml(&base("")).unwrap()),
        ZeroDates::Error
    );
    for (text, expected) in [("error", ZeroDates::Error), ("null", ZeroDates::Null)] {
        let config = Config::from_toml(&base("").replace(
            "server_id = 4201",
            &format!("server_id = 4201\nzero_dates = \"{text}\""),
        ))
        .unwrap();
        assert_eq!(zero_dates(&config), expected);
        assert!(format!("{config:?}").contains(&format!("zero_dates: {expected:?}")));
    }
    let text = base("").replace(
        "server_id = 4201",
        "server_id = 4201\nzero_dates = \"zero\"",
    );
    let (message, line) = parse_error(&text);
    assert!(message.contains("key `zero_dates`"), "{message}");
    assert!(message.contains("\"error\" or \"null\""), "{message}");
    assert_eq!(line, Some(11), "{message}");
    let text = base("").replace("server_id = 4201", "server_id = 4201\nzero_dates = true");
    let (message, line) = parse_error(&text);
    assert_eq!(line, Some(11), "{message}");
    // A MySQL-only key.
    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nzero_dates = \"null\"",
    );
    let (message, _) = parse_error(&text);
    assert!(message.contains("`zero_dates`"), "{message}");
    assert!(message.contains("only to kind = \"mysql\""), "{message}");
}

#[test]
fn bad_on_error_value_is_rejected() {
    let (message, _) = parse_error(&base("on_error = \"ignore\"\n"));
    assert!(message.contains("unknown variant `ignore`"), "{message}");
    let config = Config::from_toml(&base("on_error = \"halt\"\n")).unwrap();
    assert_eq!(config.pipelines[0].on_error, OnError::Halt);
}

#[test]
fn load_reads_file_and_reports_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callosum.toml");
    std::fs::write(&path, base("")).unwrap();
    assert_eq!(Config::load(&path).unwrap().pipelines.len(), 1);
    std::fs::write(&path, base("oops = 1\n")).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 17"), "{err}");
    let missing = dir.path().join("missing.toml");
    assert!(matches!(
        Config::load(&missing),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn valid_config_has_no_problems() {
    assert_eq!(problems(&parse_only(&base(""))), vec![]);
}

#[test]
fn pipeline_stores_must_exist_and_differ() {
    let config = parse_only(&base("").replace("to = \"erp\"", "to = \"nope\""));
    assert_problem(&config, "pipelines[0].to", "store `nope` is not defined");
    let config = parse_only(&base("").replace("from = \"crm\"", "from = \"erp\""));
    assert_problem(&config, "pipelines[0].to", "same store");
    let config = parse_only(&base("").replace("from = \"crm\"", "from = \"gone\""));
    assert_problem(
        &config,
        "pipelines[0].from",
        "store `gone` is not defined (defined stores: crm, erp)",
    );
}

#[test]
fn pipeline_names_are_unique_and_simple() {
    let second =
        "\n[[pipelines]]\nname = \"crm_to_erp\"\nfrom = \"crm\"\nto = \"erp\"\ntables = [\"x\"]\n";
    let config = parse_only(&base(second));
    assert_problem(
        &config,
        "pipelines[1].name",
        "also the name of pipelines[0]",
    );
    for bad in ["CRM", "crm-erp", "", "crm erp"] {
        let config =
            parse_only(&base("").replace("name = \"crm_to_erp\"", &format!("name = \"{bad}\"")));
        assert_problem(&config, "pipelines[0].name", "not a valid pipeline name");
    }
}

#[test]
fn tables_must_be_non_empty_and_well_formed() {
    let config = parse_only(&base("").replace("[\"public.accounts\", \"orders\"]", "[]"));
    assert_problem(&config, "pipelines[0].tables", "is empty");
    let config = parse_only(&base("").replace("\"orders\"", "\"a.b.c\""));
    assert_problem(&config, "pipelines[0].tables[1]", "not a table name");
    let config = parse_only(&base("").replace("\"orders\"", "\"public.\""));
    assert_problem(&config, "pipelines[0].tables[1]", "not a table name");
    let config = parse_only(&base("").replace("\"orders\"", "\"public.accounts\""));
    assert_problem(&config, "pipelines[0].tables[1]", "listed twice");
}

#[test]
fn url_scheme_must_match_kind() {
    let config = parse_only(&base("").replace("postgres://", "mysql://"));
    assert_problem(
        &config,
        "stores.crm.url",
        "does not match kind = \"postgres\"",
    );
    let config = parse_only(&base("").replace("postgres://", "postgresql://"));
    assert_eq!(problems(&config), vec![]);
    let config = parse_only(&base("").replace("mysql://", "postgres://"));
    assert_problem(&config, "stores.erp.url", "does not match kind = \"mysql\"");
    let config = parse_only(&base("").replace("mysql://callosum@127.0.0.1:3306/erp", "not a url"));
    assert_problem(&config, "stores.erp.url", "not a valid URL");
}

#[test]
fn password_sources_are_exclusive() {
    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\npassword_env = \"X\"\npassword_file = \"/x\"",
    );
    assert_problem(
        &parse_only(&text),
        "stores.crm",
        "both password_env and password_file",
    );
    let text = base("")
        .replace("callosum@127.0.0.1:5432", "callosum:pw@127.0.0.1:5432")
        .replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\npassword_env = \"X\"",
        );
    assert_problem(&parse_only(&text), "stores.crm", "url contains a password");
}

#[test]
fn server_id_must_be_non_zero() {
    let config = parse_only(&base("").replace("server_id = 4201", "server_id = 0"));
    assert_problem(&config, "stores.erp.server_id", "non-zero");
}

#[test]
fn max_batch_events_must_be_positive() {
    let config = parse_only(&base("max_batch_events = 0\n"));
    assert_problem(&config, "pipelines[0].max_batch_events", "at least 1");
    let config = parse_only(&base("max_batch_events = 1\n"));
    assert_eq!(problems(&config), vec![]);
}

#[test]
fn store_names_and_slots_must_be_valid() {
    let config = parse_only(
        &base("")
            .replace("[stores.crm]", "[stores.Crm-1]")
            .replace("from = \"crm\"", "from = \"Crm-1\""),
    );
    assert_problem(&config, "stores.Crm-1", "not a valid store name");
    assert_problem(
        &config,
        "stores.Crm-1.slot",
        "default slot name `callosum_Crm-1`",
    );
    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nslot = \"my-slot\"",
    );
    assert_problem(
        &parse_only(&text),
        "stores.crm.slot",
        "`my-slot` is not a valid replication slot name",
    );
}

#[test]
fn mysql_target_and_bare_names_need_a_database() {
    let config = parse_only(&base("").replace("3306/erp", "3306"));
    assert_problem(&config, "pipelines[0].to", "names no database");
    let reverse = "\n[[pipelines]]\nname = \"back\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"erp.stock\", \"invoices\"]\n";
    let config = parse_only(&base(reverse).replace("3306/erp", "3306"));
    assert_problem(&config, "pipelines[1].tables[1]", "needs a database");
    assert!(!problems(&config)
        .iter()
        .any(|p| p.key == "pipelines[1].tables[0]"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = base("max_batch_events = 0\n")
        .replace("server_id = 4201", "server_id = 0")
        .replace("to = \"erp\"", "to = \"nope\"");
    let err = Config::from_toml(&text).unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("expected Invalid, got {err}")
    };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let message = err.to_string();
    assert!(
        message.starts_with("invalid config: 3 problems"),
        "{message}"
    );
    assert!(
        message.contains("\n  - stores.erp.server_id: must be non-zero"),
        "{message}"
    );
}

#[test]
fn empty_config_lists_missing_parts() {
    let config = parse_only("data_dir = \"\"\n");
    assert_problem(&config, "data_dir", "is empty");
    assert_problem(&config, "stores", "no store defined");
    assert_problem(&config, "pipelines", "no pipeline defined");
}

#[test]
fn secret_and_urls_never_print_the_password() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(secret.expose(), "hunter2");

    let text = base("").replace("callosum@127.0.0.1:5432", "callosum:hunter2@127.0.0.1:5432");
    let config = Config::from_toml(&text).unwrap();
    let crm = &config.stores["crm"];
    assert_eq!(
        crm.redacted_url(),
        "postgres://callosum:***@127.0.0.1:5432/crm"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    assert_eq!(crm.password().unwrap().unwrap().expose(), "hunter2");
    assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
    assert!(!redact_url("mysql://u:hunter2@h:bad/db").contains("hunter2"));
}

#[test]
fn password_from_url_is_percent_decoded() {
    let text = base("").replace(
        "callosum@127.0.0.1:3306",
        "callosum:p%40ss%2Fw@127.0.0.1:3306",
    );
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(
        config.stores["erp"].password().unwrap().unwrap().expose(),
        "p@ss/w"
    );
    assert_eq!(config.stores["crm"].password().unwrap(), None);
}

#[test]
fn password_from_env() {
    // A variable every process has: setting one would race with other
    // tests reading the environment.
    let var = "PATH";
    let expected = std::env::var(var).expect("PATH is set");
    let text = base("").replace(
        "kind = \"postgres\"",
        &format!("kind = \"postgres\"\npassword_env = \"{var}\""),
    );
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(
        config.stores["crm"].password().unwrap().unwrap().expose(),
        expected
    );

    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\npassword_env = \"CALLOSUM_TEST_CONFIG_PASSWORD_ENV_UNSET\"",
    );
    let config = Config::from_toml(&text).unwrap();
    let err = config.stores["crm"].password().unwrap_err();
    assert!(matches!(err, ConfigError::PasswordEnv { .. }));
    assert!(err
        .to_string()
        .contains("CALLOSUM_TEST_CONFIG_PASSWORD_ENV_UNSET named by password_env is not set"));
}

#[test]
fn password_from_file_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "  s3cret\n").unwrap();
    let text = base("").replace(
        "server_id = 4201",
        &format!("server_id = 4201\npassword_file = \"{}\"", path.display()),
    );
    let config = Config::from_toml(&text).unwrap();
    let erp = &config.stores["erp"];
    assert_eq!(erp.password().unwrap().unwrap().expose(), "s3cret");
    std::fs::write(&path, "\n").unwrap();
    assert!(matches!(
        erp.password(),
        Err(ConfigError::EmptyPasswordFile { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        erp.password(),
        Err(ConfigError::PasswordFile { .. })
    ));
}

#[test]
fn postgres_names_default_to_store_name() {
    let config = parse_only(&base(""));
    let StoreConfig::Postgres(pg) = &config.stores["crm"] else {
        unreachable!()
    };
    assert_eq!(pg.slot_name("crm"), "callosum_crm");
    assert_eq!(pg.publication_name("crm"), "callosum_crm");
    assert_eq!(pg.default_namespace(), "public");
    assert_eq!(pg.database().as_deref(), Some("crm"));
    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nslot = \"s1\"\npublication = \"p1\"\nschema = \"sales\"",
    );
    let config = parse_only(&text);
    let StoreConfig::Postgres(pg) = &config.stores["crm"] else {
        unreachable!()
    };
    assert_eq!(pg.slot_name("crm"), "s1");
    assert_eq!(pg.publication_name("crm"), "p1");
    assert_eq!(config.stores["crm"].default_namespace().unwrap(), "sales");
}

#[test]
fn mysql_default_namespace_is_url_database() {
    let config = parse_only(&base(""));
    assert_eq!(config.stores["erp"].default_namespace().unwrap(), "erp");
    let config = parse_only(&base("").replace("3306/erp", "3306/"));
    let err = config.stores["erp"].default_namespace().unwrap_err();
    assert!(matches!(err, ConfigError::NoDatabase { .. }), "{err}");
}

#[test]
fn source_tables_resolve_bare_names() {
    let config = parse_only(&base(""));
    let tables = config.pipelines[0].source_tables(&config.stores["crm"]);
    assert_eq!(
        tables,
        vec![
            TableId::new("public", "accounts"),
            TableId::new("public", "orders")
        ]
    );
    let mysql_tables = PipelineConfig {
        tables: vec!["stock".into(), "other.t".into()],
        ..config.pipelines[0].clone()
    }
    .source_tables(&config.stores["erp"]);
    assert_eq!(
        mysql_tables,
        vec![TableId::new("erp", "stock"), TableId::new("other", "t")]
    );
}

#[test]
fn mirror_table_maps_namespaces() {
    let text = base("").replace("3306/erp", "3306/erp_db")
        + "\n[stores.pg2]\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\nschema = \"mirror\"\n\n[stores.my2]\nkind = \"mysql\"\nurl = \"mysql://u@h/other\"\nserver_id = 7\n";
    let config = parse_only(&text);
    let (crm, erp, pg2, my2) = (
        &config.stores["crm"],
        &config.stores["erp"],
        &config.stores["pg2"],
        &config.stores["my2"],
    );
    let pg_table = TableId::new("sales", "accounts");
    let my_table = TableId::new("erp_db", "stock");
    // PostgreSQL -> MySQL: the target URL's database.
    assert_eq!(
        mirror_table(&pg_table, crm, erp),
        TableId::new("erp_db", "accounts")
    );
    // MySQL -> PostgreSQL: public, or the target's schema.
    assert_eq!(
        mirror_table(&my_table, erp, crm),
        TableId::new("public", "stock")
    );
    assert_eq!(
        mirror_table(&my_table, erp, pg2),
        TableId::new("mirror", "stock")
    );
    // PostgreSQL -> PostgreSQL: the schema is kept.
    assert_eq!(mirror_table(&pg_table, crm, pg2), pg_table);
    // MySQL -> MySQL: the target URL's database.
    assert_eq!(
        mirror_table(&my_table, erp, my2),
        TableId::new("other", "stock")
    );
}

#[test]
fn acknowledge_defaults_to_applied_parses_and_is_postgres_only() {
    let acknowledge = |config: &Config| match &config.stores["crm"] {
        StoreConfig::Postgres(crm) => crm.acknowledge,
        other => panic!("crm is postgres: {other:?}"),
    };
    assert_eq!(
        acknowledge(&Config::from_toml(&base("")).unwrap()),
        Acknowledge::Applied
    );
    for (text, expected) in [
        ("applied", Acknowledge::Applied),
        ("logged", Acknowledge::Logged),
    ] {
        let config = Config::from_toml(&base("").replace(
            "kind = \"postgres\"",
            &format!("kind = \"postgres\"\nacknowledge = \"{text}\""),
        ))
        .unwrap();
        assert_eq!(acknowledge(&config), expected);
    }
    let text = base("").replace(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nacknowledge = \"flushed\"",
    );
    let (message, _) = parse_error(&text);
    assert!(message.contains("key `acknowledge`"), "{message}");
    assert!(message.contains("\"applied\" or \"logged\""), "{message}");
    // a binlog server is told nothing
    let text = base("").replace(
        "server_id = 4201",
        "server_id = 4201\nacknowledge = \"logged\"",
    );
    let (message, _) = parse_error(&text);
    assert!(message.contains("`acknowledge`"), "{message}");
    assert!(message.contains("only to kind = \"postgres\""), "{message}");
}

#[test]
fn tls_is_chosen_per_store_and_checked() {
    let with = |pg: &str, my: &str| {
        base("")
            .replace("kind = \"postgres\"", &format!("kind = \"postgres\"\n{pg}"))
            .replace("kind = \"mysql\"", &format!("kind = \"mysql\"\n{my}"))
    };
    let ca = tempfile::NamedTempFile::new().unwrap();
    let ca_key = format!("tls_ca_file = \"{}\"", ca.path().display());
    let config = Config::from_toml(&with(
        &format!("tls = \"verify-ca\"\n{ca_key}"),
        &format!("tls = \"verify-full\"\n{ca_key}"),
    ))
    .unwrap();
    assert_eq!(config.stores["crm"].tls().mode, TlsMode::VerifyCa);
    assert_eq!(config.stores["erp"].tls().mode, TlsMode::VerifyFull);
    assert_eq!(
        config.stores["erp"].tls().ca_file.as_deref(),
        Some(ca.path())
    );
    // the default is plain TCP
    assert_eq!(
        Config::from_toml(&base("")).unwrap().stores["crm"].tls(),
        &TlsSettings::default()
    );

    let (message, _) = parse_error(&with("tls = \"prefer\"", ""));
    assert!(message.contains("key `tls`"), "{message}");
    assert!(message.contains("verify-full"), "{message}");

    let config = parse_only(&with(&format!("tls = \"require\"\n{ca_key}"), ""));
    assert_problem(&config, "stores.crm.tls_ca_file", "only with tls");
    let config = parse_only(&with(
        "tls = \"verify-full\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
        "",
    ));
    assert_problem(&config, "stores.crm.tls_ca_file", "cannot read");
    let config = parse_only(&with("", "tls = \"verify-ca\""));
    assert_problem(&config, "stores.erp.tls", "verify-full");
    let config = parse_only(&base("").replace(
        "127.0.0.1:5432/crm\"",
        "127.0.0.1:5432/crm?sslmode=require\"",
    ));
    assert_problem(&config, "stores.crm.url", "tls");
}

#[test]
fn the_admin_token_comes_from_one_place_and_guards_a_listener_beyond_loopback() {
    let with_http = |http: &str| {
        base("").replace(
            "data_dir = \"/tmp/callosum\"\n",
            &format!("data_dir = \"/tmp/callosum\"\n\n[http]\n{http}\n"),
        )
    };
    assert!(Config::from_toml(&with_http("listen = \"127.0.0.1:9464\"")).is_ok());
    let config = parse_only(&with_http("listen = \"0.0.0.0:9464\""));
    assert_problem(&config, "http.listen", "token_file");
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "  t0ken \n").unwrap();
    let config = Config::from_toml(&with_http(&format!(
        "listen = \"0.0.0.0:9464\"\ntoken_file = \"{}\"",
        token.path().display()
    )))
    .unwrap();
    assert_eq!(
        config.http.admin_token().unwrap().unwrap().expose(),
        "t0ken"
    );
    let config = parse_only(&with_http(&format!(
        "token_env = \"X\"\ntoken_file = \"{}\"",
        token.path().display()
    )));
    assert_problem(&config, "http", "keep one");
    std::fs::write(token.path(), "\n").unwrap();
    let config = Config::from_toml(&with_http(&format!(
        "token_file = \"{}\"",
        token.path().display()
    )))
    .unwrap();
    let err = config.http.admin_token().unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(
        Config::from_toml(&base("")).unwrap().log_format,
        LogFormat::Text
    );
    let json = format!("log_format = \"json\"\n{}", base(""));
    assert_eq!(
        Config::from_toml(&json).unwrap().log_format,
        LogFormat::Json
    );
    let (message, _) = parse_error(&format!("log_format = \"yaml\"\n{}", base("")));
    assert!(message.contains("key `log_format`"), "{message}");
}

#[test]
fn lease_defaults_and_durations() {
    let config = Config::from_toml(&base("\n[lease]\nstore = \"erp\"\n")).expect("valid");
    let lease = config.lease.expect("lease section");
    assert_eq!(lease.name, DEFAULT_LEASE_NAME);
    assert_eq!(lease.duration.0, DEFAULT_LEASE_DURATION);
    assert!(lease
        .holder_name()
        .ends_with(&format!("-{}", std::process::id())));
    let config = Config::from_toml(&base(
        "\n[lease]\nstore = \"crm\"\nduration = \"3s\"\nholder = \"host-a\"\n",
    ))
    .expect("valid");
    let lease = config.lease.expect("lease section");
    assert_eq!(lease.duration.0, std::time::Duration::from_secs(3));
    assert_eq!(lease.holder_name(), "host-a");
    assert_eq!(
        parse_duration("500ms"),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(
        parse_duration("2m"),
        Some(std::time::Duration::from_secs(120))
    );
    assert_eq!(parse_duration("15"), None);
    assert_eq!(parse_duration("1h"), None);
}

#[test]
fn lease_problems_name_their_keys() {
    let (message, line) = parse_error(&base("\n[lease]\nstore = \"erp\"\nttl = \"3s\"\n"));
    assert!(message.contains("unknown field `ttl`"), "{message}");
    assert!(line.is_some());
    let (message, _) = parse_error(&base("\n[lease]\nstore = \"erp\"\nduration = \"soon\"\n"));
    assert!(message.contains("`soon` is not a duration"), "{message}");
    let config = parse_only(&base(
        "\n[lease]\nstore = \"nowhere\"\nduration = \"500ms\"\nname = \"\"\n",
    ));
    assert_problem(&config, "lease.store", "store `nowhere` is not defined");
    assert_problem(&config, "lease.duration", "too short");
    assert_problem(&config, "lease.name", "1 to 255");
    let config = parse_only(&base("\n[lease]\nstore = \"erp\"\n").replace(
        "url = \"postgres://callosum@127.0.0.1:5432/crm\"",
        "url = \"postgres://callosum@127.0.0.1:5432/crm\"\nacknowledge = \"logged\"",
    ));
    assert_problem(
        &config,
        "stores.crm.acknowledge",
        "cannot be used with [lease]",
    );
}

//! Every setting of the agent and the broker is documented in docs/CONFIG.md, and the
//! defaults pass their own validation.

#[test]
fn every_setting_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let keys = runnel_agent::AgentConfig::documented_keys()
        .iter()
        .chain(runnel_broker::BrokerConfig::documented_keys());
    let missing: Vec<_> = keys.filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(
        missing.is_empty(),
        "settings missing from docs/CONFIG.md: {missing:?}"
    );
}

#[test]
fn defaults_are_valid_and_errors_name_the_field() {
    let agent = runnel_agent::AgentConfig {
        data_dir: "/tmp/x".into(),
        broker_ca: Some("/tmp/ca.pem".into()),
        tls_cert: Some("/tmp/agent.pem".into()),
        tls_key: Some("/tmp/agent.key".into()),
        ..Default::default()
    };
    agent.validate().unwrap();
    let broker = runnel_broker::BrokerConfig {
        data_dir: "/tmp/x".into(),
        ..Default::default()
    };
    broker.validate().unwrap();
    let err = runnel_agent::AgentConfig::default()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_dir"), "{err}");
    let bad = runnel_agent::AgentConfig {
        spool_bytes_max: 1,
        ..agent
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("spool_bytes_max")
    );
    let toml_err = toml::from_str::<runnel_agent::AgentConfig>("spool_bytes_maxx = 3")
        .unwrap_err()
        .to_string();
    assert!(toml_err.contains("spool_bytes_maxx"), "{toml_err}");
}

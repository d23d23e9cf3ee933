//! Names derived from a resource stay valid for any valid resource name.

use hookline_api::naming::*;

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_label_value(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && (text.is_empty()
            || (text.starts_with(|c: char| c.is_ascii_alphanumeric())
                && text.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn is_stream_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && !text
            .chars()
            .any(|c| c.is_whitespace() || ".*>/\\".contains(c))
}

/// A valid resource name of 247 characters: four 60-character DNS labels.
fn long_name() -> String {
    (0..4)
        .map(|index| format!("segment-{index}-{}", "x".repeat(50)))
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn stream_and_subjects_follow_the_contract() {
    assert_eq!(
        stream_name("payments", "stripe"),
        "HOOKLINE_payments_stripe"
    );
    assert_eq!(
        stream_name("payments", "stripe.eu"),
        "HOOKLINE_payments_stripe_eu"
    );
    assert_eq!(
        subject_prefix("payments", "stripe.eu"),
        "hookline.payments.stripe_eu"
    );
    assert_eq!(subject_token("invoice.paid"), "invoice_paid");
    assert_eq!(subject_token("orders/create"), "orders_create");
    assert_eq!(subject_token(""), "unknown");
    assert_eq!(DURABLE_CONSUMER, "hookline-consumer");
}

#[test]
fn names_stay_valid_for_the_longest_resource_names() {
    let long = long_name();
    assert!(long.len() > 200 && check_resource_name(&long).is_ok());
    let namespace = "n".repeat(63);
    assert!(is_stream_name(&stream_name(&namespace, &long)));
    for suffix in ["receiver", "consumer", "manifest"] {
        let name = child_name(&long, suffix);
        assert!(is_dns_label(&name), "{name}");
        assert!(name.ends_with(suffix));
    }
    assert!(is_label_value(&label_value(&long)));
    assert!(
        labels(&long, "receiver")
            .values()
            .all(|value| is_label_value(value))
    );
}

#[test]
fn truncated_names_stay_distinct() {
    let long = long_name();
    let other = long.replace("segment-3", "segment-9");
    assert_ne!(
        child_name(&long, "receiver"),
        child_name(&other, "receiver")
    );
    assert_ne!(stream_name("ns", &long), stream_name("ns", &other));
}

#[test]
fn child_names_start_with_a_letter() {
    assert_eq!(child_name("stripe", "receiver"), "stripe-receiver");
    assert!(is_dns_label(&child_name("3scale", "receiver")));
}

#[test]
fn names_that_map_to_the_same_label_get_distinct_children() {
    for (a, b) in [
        ("stripe.eu", "stripe-eu"),
        ("3scale", "whe-3scale"),
        ("a.b.c", "a-b.c"),
    ] {
        for suffix in ["receiver", "consumer", "endpoint"] {
            let (first, second) = (child_name(a, suffix), child_name(b, suffix));
            assert_ne!(first, second, "{a} and {b}");
            assert!(is_dns_label(&first) && is_dns_label(&second));
        }
    }
    let dotted = child_name("stripe.eu", "receiver");
    assert!(
        dotted.starts_with("stripe-eu-") && dotted.ends_with("-receiver"),
        "{dotted}"
    );
    assert_eq!(dotted, child_name("stripe.eu", "receiver"), "deterministic");
}

#[test]
fn a_named_cluster_gets_streams_and_subjects_of_its_own() {
    assert_eq!(
        stream_name_in(Some("eu1"), "payments", "stripe"),
        "HOOKLINE-eu1_payments_stripe"
    );
    assert_eq!(
        subject_prefix_in(Some("eu1"), "payments", "stripe"),
        "hookline-eu1.payments.stripe"
    );
    assert_eq!(
        stream_name_in(None, "payments", "stripe"),
        stream_name("payments", "stripe")
    );
    // An unnamed cluster's namespace `eu1` cannot overlap a named one's subjects.
    assert!(
        !subject_prefix_in(Some("eu1"), "payments", "stripe")
            .starts_with(&subject_prefix("eu1", "payments"))
    );
    assert!(is_stream_name(&stream_name_in(
        Some(&"c".repeat(32)),
        &"n".repeat(63),
        &long_name()
    )));
    assert!(check_cluster_name("eu-1").is_ok());
    for bad in ["", "EU1", "eu_1", "-eu", &"c".repeat(33)] {
        assert!(check_cluster_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_pools_shared_stream_never_meets_an_endpoints_names() {
    assert_eq!(
        pool_stream_name_in(None, "shop", "eu"),
        "HOOKLINE_shop_POOL_eu"
    );
    assert_eq!(
        pool_stream_name_in(Some("c1"), "shop", "eu.1"),
        "HOOKLINE-c1_shop_POOL_eu_1"
    );
    let prefix = pool_subject_prefix_in(None, "shop", "eu");
    assert_eq!(prefix, "hookline.shop.POOL_eu");
    assert_eq!(
        pool_member_subject_prefix(&prefix, "a.b"),
        "hookline.shop.POOL_eu.a_b"
    );
    assert_eq!(pool_member_token("a.b"), "a_b");
    assert!(is_stream_name(&pool_stream_name_in(
        Some(&"c".repeat(32)),
        &"n".repeat(63),
        &long_name()
    )));
    // No endpoint name is upper case, so none shares the pool's stream or subjects.
    for name in ["pool-eu", "pool.eu", "eu"] {
        assert_ne!(
            stream_name("shop", name),
            pool_stream_name_in(None, "shop", "eu")
        );
        assert!(!prefix.starts_with(&format!("{}.", subject_prefix("shop", name))));
    }
    assert_eq!(
        retired_subject_in(None, "shop", "a.b"),
        "hookline_retired.shop.a_b"
    );
    assert_eq!(
        retired_subject_in(Some("c1"), "shop", "a"),
        "hookline-c1_retired.shop.a"
    );
}

#[test]
fn deletion_advisories_are_read_back_from_their_subjects() {
    assert_eq!(
        deleted(&stream_deleted_advisory("HOOKLINE_shop_orders")),
        Some(Deleted::Stream("HOOKLINE_shop_orders"))
    );
    assert_eq!(
        deleted(&consumer_deleted_advisory(
            "HOOKLINE_shop_orders",
            "hookline-consumer"
        )),
        Some(Deleted::Consumer {
            stream: "HOOKLINE_shop_orders",
            consumer: "hookline-consumer"
        })
    );
    for subject in DELETION_ADVISORIES {
        assert!(subject.starts_with("$JS.EVENT.ADVISORY."), "{subject}");
    }
    assert_eq!(deleted("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c"), None);
    assert_eq!(deleted("$JS.EVENT.ADVISORY.CONSUMER.DELETED.S"), None);
}

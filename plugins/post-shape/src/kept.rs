//! The scan `needed-ids` made, kept for `enrich`. The proxy usually runs
//! `needed-ids` and `enrich` of one response in the same instance, one
//! after the other, with the same body: then `enrich` need not scan the
//! body again. It uses the kept plan only for exactly the body it was made
//! from (compared byte for byte, far cheaper than a scan), so a fresh
//! instance, another body or another field simply scans anew.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::plan::Plan;
use crate::scan::same_bytes;

struct Kept {
    body: String,
    field: String,
    plan: Plan,
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// `needed-ids` for a policy that writes `field`: the distinct authors of
/// the body's posts, its plan kept for `splice_kept`.
pub fn needed_ids_kept(body: String, field: &str) -> Result<Vec<String>, String> {
    let plan = Plan::new(&body, field)?;
    let ids = plan.author_ids(&body);
    KEPT.with(|k| {
        *k.borrow_mut() = Some(Kept {
            body,
            field: field.to_string(),
            plan,
        })
    });
    Ok(ids)
}

/// `splice_snapshots` with the plan `needed_ids_kept` made for this very
/// body, if it made one; it is used once and dropped.
pub fn splice_kept(
    body: &str,
    field: &str,
    snapshots: &HashMap<String, String>,
) -> Result<String, String> {
    let kept = KEPT.with(|k| k.borrow_mut().take());
    let plan = match kept {
        Some(k) if same_bytes(k.body.as_bytes(), body.as_bytes()) && k.field == field => k.plan,
        _ => Plan::new(body, field)?,
    };
    Ok(plan.splice(body, snapshots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_plan_serves_only_its_own_body() {
        let snaps: HashMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let a = r#"{"posts":[{"userId":"a"}]}"#;
        let b = r#"{"posts":[{"userId":"b","s":0}]}"#;
        assert_eq!(needed_ids_kept(a.into(), "s").unwrap(), ["a"]);
        // Another body: scanned anew, not spliced at the kept offsets.
        assert_eq!(
            splice_kept(b, "s", &snaps).unwrap(),
            r#"{"posts":[{"userId":"b","s":2}]}"#
        );
        assert_eq!(needed_ids_kept(a.into(), "s").unwrap(), ["a"]);
        assert_eq!(
            splice_kept(a, "s", &snaps).unwrap(),
            r#"{"posts":[{"userId":"a","s":1}]}"#
        );
        // Used once: the next call scans again.
        assert_eq!(
            splice_kept(a, "t", &snaps).unwrap(),
            r#"{"posts":[{"userId":"a","t":1}]}"#
        );
    }
}

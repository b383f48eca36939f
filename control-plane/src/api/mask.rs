//! Update masks: which fields an Update call changes.

use crate::domain::validate::{Violations, truncate};

/// Validates an update mask against the fields that may change; returns its paths.
pub(super) fn update_paths(
    v: &mut Violations,
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&str],
) -> Vec<String> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        v.add(
            "update_mask",
            "is required and must name at least one field",
        );
        return Vec::new();
    };
    if mask.paths.len() > allowed.len() {
        v.add("update_mask", "names too many fields");
        return Vec::new();
    }
    for path in &mask.paths {
        if !allowed.contains(&path.as_str()) {
            v.add(
                "update_mask",
                format!(
                    "unknown or read-only field {:?}; allowed: {}",
                    truncate(path, 64),
                    allowed.join(", ")
                ),
            );
        }
    }
    mask.paths.clone()
}

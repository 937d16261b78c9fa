//! The example report in docs/inventory.md must stay a valid HardwareFacts
//! document that round-trips unchanged.

use anvil_inventory::HardwareFacts;

#[test]
fn the_documented_example_is_a_valid_report() {
    let doc = include_str!("../../../docs/inventory.md");
    let start = doc
        .find("```json\n")
        .expect("a json block in docs/inventory.md")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    let value: serde_json::Value = serde_json::from_str(&doc[start..end]).unwrap();
    let facts: HardwareFacts = serde_json::from_value(value.clone()).unwrap();
    facts.validate().unwrap();
    assert_eq!(
        serde_json::to_value(&facts).unwrap(),
        value,
        "every field documented, none extra"
    );
}

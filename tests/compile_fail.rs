//! Signatures that cannot cross a process boundary are compile errors at the offending token.

#[test]
fn process_signatures_that_cannot_cross_a_process_boundary_are_rejected() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

//! Tree blob decoding (repo-format.md §9): JSON directory listings whose
//! names restore uses as path components.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::unix::ffi::OsStrExt;
use std::path::Component;
use vault_engine::tree::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        for node in &tree.nodes {
            // A decoded name must be exactly one normal path component, or
            // restore could write outside its target.
            let name = node.os_name();
            let path = std::path::Path::new(&name);
            let mut comps = path.components();
            assert!(
                matches!(comps.next(), Some(Component::Normal(_))) && comps.next().is_none(),
                "node name {name:?} is not a single path component"
            );
            // Nor one the kernel would cut short or refuse.
            assert!(!name.as_bytes().contains(&0), "node name {name:?} holds a NUL");
            let _ = node.os_link_target();
        }
        let again = Tree::decode(&tree.encode()).expect("an encoded tree decodes");
        assert_eq!(again, tree, "encode/decode round trip");
    }
});

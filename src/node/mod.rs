//! Placeholder: the node.

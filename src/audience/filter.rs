//! Placeholder: being written (see the module documentation of `audience`).

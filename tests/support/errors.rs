//! Typed causes of errors, so tests check why a call failed without reading its text.

/// The first error of type `T` in `err`'s source chain (`err` included).
pub fn cause<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    kvkit::error::source_chain(err).find_map(|err| err.downcast_ref::<T>())
}

//! The checks a request passes before it is stored, one file each, in the
//! order the pipeline runs them: [`headers`] size (431), [`source`] (403),
//! [`body`] size (413), [`signature`] (401), [`body`] media type and JSON
//! (415/400), the event's type against `spec.event.accept`/`ignore` (in
//! [`crate::pipeline`]: 200 `ignored`), [`schema`] (422), [`rate`] limit (429).

pub mod body;
pub mod headers;
pub mod rate;
pub mod schema;
pub mod signature;
pub mod source;

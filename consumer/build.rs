//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding
//! a migration file would not rebuild the crate and the new migration would be
//! silently missing from an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

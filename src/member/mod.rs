//! The member protocol, `/datamesh/meta/1`: what a member device asks its
//! home node, and how each side answers. [`wire`] is its messages;
//! [`server`] the home's side (who may ask; `budget`: what one member may
//! make the home hold; `answer`: the answers from the daemon's engine); [`client`] a member's
//! commands (`join`, and the volume as they see it); [`namespace`] a
//! member's mount (the namespace asked of the home), [`defer`] its line
//! to the home with the changes it holds back, and [`held`] the directories
//! the home promised it; [`link`] what the two
//! member sides share to reach the home. The bytes travel on the mesh
//! ([`crate::net::member`]). See docs/DESIGN.md, "Member devices and the
//! metadata protocol".

mod answer;
mod budget;
pub mod client;
pub mod defer;
mod eras;
pub mod held;
pub mod link;
pub mod namespace;
pub mod server;
pub mod wire;

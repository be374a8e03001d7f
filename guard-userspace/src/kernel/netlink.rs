//! The interface as rtnetlink sees it, in this process's network namespace:
//! which XDP program it runs (so a guard can tell its own pins from another
//! namespace's), and its comings and goings (an interface deleted and made
//! again needs the guard re-attached). The messages are built and parsed by
//! netlink-packet-route, the rust-netlink project's codec, rather than by
//! hand: the attribute layout has many variants and versions.
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, Socket, SocketAddr};
use thiserror::Error;

/// The rtnetlink multicast group of link changes (RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;
const ENODEV: i32 = 19;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot decode a netlink answer: {0}")]
    Decode(String),
}

/// The XDP program attached to interface `ifindex` of this namespace:
/// None if there is no such interface or it runs none.
pub fn xdp_program(ifindex: u32) -> Result<Option<u32>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)),
    );
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (answer, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| NetlinkError::Decode(e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Ok(attached_program(&link))
        }
        NetlinkPayload::Error(e) if e.code.is_some_and(|c| c.get() == -ENODEV) => Ok(None),
        NetlinkPayload::Error(e) => Err(NetlinkError::Io(e.to_io())),
        other => Err(NetlinkError::Decode(format!("unexpected {other:?}"))),
    }
}

fn attached_program(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

/// A link change in this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was made or changed (up, down, renamed...).
    Changed { index: u32, name: String },
    /// A link was deleted.
    Deleted { index: u32, name: String },
}

/// A subscription to the namespace's link changes.
pub struct LinkWatch {
    socket: netlink_sys::TokioSocket,
}

impl LinkWatch {
    /// Subscribes; changes from now on are reported by [`LinkWatch::next`].
    pub fn open() -> Result<LinkWatch, NetlinkError> {
        let mut socket = netlink_sys::TokioSocket::new(NETLINK_ROUTE)?;
        socket.socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(LinkWatch { socket })
    }

    /// The next batch of changes. An error (ENOBUFS: changes were lost)
    /// means the caller should look at the interface afresh.
    pub async fn next(&mut self) -> Result<Vec<LinkEvent>, NetlinkError> {
        let (datagram, _) = self.socket.recv_from_full().await?;
        Ok(parse_events(&datagram))
    }
}

/// Every link message in one datagram (several may share it).
fn parse_events(mut datagram: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while datagram.len() >= 16 {
        let length = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]);
        let length = length as usize;
        if length < 16 || length > datagram.len() {
            break;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..length])
        {
            if let Some(event) = link_event(message.payload) {
                events.push(event);
            }
        }
        let aligned = (length + 3) & !3;
        datagram = &datagram[aligned.min(datagram.len())..];
    }
    events
}

fn link_event(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
    let NetlinkPayload::InnerMessage(message) = payload else {
        return None;
    };
    let (link, deleted) = match message {
        RouteNetlinkMessage::NewLink(link) => (link, false),
        RouteNetlinkMessage::DelLink(link) => (link, true),
        _ => return None,
    };
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    let index = link.header.index;
    Some(if deleted {
        LinkEvent::Deleted { index, name }
    } else {
        LinkEvent::Changed { index, name }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: RouteNetlinkMessage) -> Vec<u8> {
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload.into());
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        buf
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link
    }

    #[test]
    fn every_link_message_of_a_datagram_is_read() {
        let mut datagram = message(RouteNetlinkMessage::DelLink(link(5, "veth0")));
        datagram.extend(message(RouteNetlinkMessage::NewLink(link(9, "veth0"))));
        datagram.extend([0u8; 7]); // a truncated tail is ignored
        assert_eq!(
            parse_events(&datagram),
            [
                LinkEvent::Deleted {
                    index: 5,
                    name: "veth0".into()
                },
                LinkEvent::Changed {
                    index: 9,
                    name: "veth0".into()
                }
            ]
        );
    }

    #[test]
    fn the_attached_program_is_read_from_the_xdp_attribute() {
        let mut with = link(2, "eth0");
        with.attributes
            .push(LinkAttribute::Xdp(vec![LinkXdp::ProgId(42)]));
        assert_eq!(attached_program(&with), Some(42));
        assert_eq!(attached_program(&link(2, "eth0")), None);
    }

    #[test]
    fn loopback_runs_no_xdp_program_and_a_missing_index_is_none() {
        // Index 1 is loopback in every namespace.
        assert_eq!(xdp_program(1).expect("netlink answers"), None);
        assert_eq!(xdp_program(2_000_000_000).expect("netlink answers"), None);
    }
}

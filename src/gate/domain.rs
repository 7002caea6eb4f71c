//! The libvirt domain XML a hook receives: the domain's name, UUID, MAC addresses and the vmsentry token in its metadata.

use crate::decode::Mac;

/// The namespace of vmsentry's element in `<metadata>`.
pub const NAMESPACE: &str = "urn:vmsentry:1";
/// The element (in [`NAMESPACE`]) that holds a move token.
pub const TOKEN_ELEMENT: &str = "authorization";

/// What the gate needs of a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Domain {
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// `<devices><interface><mac address=…>`, in document order, without duplicates.
    pub macs: Vec<Mac>,
    /// The text of `<metadata><vms:authorization xmlns:vms="urn:vmsentry:1">`, trimmed.
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("the domain XML does not parse: {0}")]
    Xml(String),
    #[error("the XML's root element is <{0}>, expected <domain>")]
    Root(String),
    #[error("interface MAC `{0}` is not a MAC address")]
    Mac(String),
    #[error("the domain carries {0} vmsentry authorization elements; one is allowed")]
    Tokens(usize),
}

impl Domain {
    /// Parses a `<domain>` document. DTDs are refused (roxmltree's default),
    /// so no entity expansion can blow it up.
    pub fn parse(xml: &str) -> Result<Domain, DomainError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| DomainError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
            return Err(DomainError::Root(root.tag_name().name().to_string()));
        }
        let text = |n: Option<roxmltree::Node<'_, '_>>| n.and_then(|n| n.text()).map(|t| t.trim().to_string());
        let mut d = Domain { name: text(child(root, "name")), uuid: text(child(root, "uuid")), ..Domain::default() };
        if let Some(devices) = child(root, "devices") {
            for iface in devices.children().filter(|c| c.is_element() && c.tag_name().name() == "interface") {
                let Some(addr) = child(iface, "mac").and_then(|m| m.attribute("address")) else { continue };
                let mac: Mac = addr.trim().parse().map_err(|_| DomainError::Mac(addr.to_string()))?;
                if !d.macs.contains(&mac) {
                    d.macs.push(mac);
                }
            }
        }
        if let Some(meta) = child(root, "metadata") {
            let tokens: Vec<_> = meta
                .children()
                .filter(|c| {
                    c.is_element()
                        && c.tag_name().namespace() == Some(NAMESPACE)
                        && c.tag_name().name() == TOKEN_ELEMENT
                })
                .collect();
            if tokens.len() > 1 {
                return Err(DomainError::Tokens(tokens.len()));
            }
            d.token = tokens.first().map(|t| t.text().unwrap_or("").trim().to_string());
        }
        Ok(d)
    }
}

/// The first child element `name` (no namespace) of `n`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like `virsh dumpxml` after `virsh metadata … --key vms --set '<authorization>…'`.
    const XML: &str = r#"<domain type='qemu' id='1'>
  <name>gate-vm</name>
  <uuid>6f1e7a52-3c1d-4a4e-9a43-5b0c4f6d2a11</uuid>
  <metadata>
    <other:thing xmlns:other="urn:example:other"><authorization>not ours</authorization></other:thing>
    <vms:authorization xmlns:vms="urn:vmsentry:1">vmsentry-token-v1 vm=52:54:00:12:34:56 to=compute-2</vms:authorization>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:AB:CD:EF'/>
    </interface>
    <interface type='user'><model type='virtio'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn finds_name_uuid_macs_and_the_token_in_our_namespace_only() {
        let d = Domain::parse(XML).unwrap();
        assert_eq!(d.name.as_deref(), Some("gate-vm"));
        assert_eq!(d.uuid.as_deref(), Some("6f1e7a52-3c1d-4a4e-9a43-5b0c4f6d2a11"));
        assert_eq!(d.macs, vec!["52:54:00:12:34:56".parse().unwrap(), "52:54:00:ab:cd:ef".parse().unwrap()]);
        assert_eq!(d.token.as_deref(), Some("vmsentry-token-v1 vm=52:54:00:12:34:56 to=compute-2"));
        // The same element in another namespace, or a plain one, is not a token.
        let plain = XML.replace("xmlns:vms=\"urn:vmsentry:1\"", "xmlns:vms=\"urn:vmsentry:2\"");
        assert_eq!(Domain::parse(&plain).unwrap().token, None);
        // A token in a comment is not a token either.
        let commented = XML
            .replace("<vms:authorization", "<!--<vms:authorization")
            .replace("</vms:authorization>", "</vms:authorization>-->");
        assert_eq!(Domain::parse(&commented).unwrap().token, None);
    }

    #[test]
    fn bad_documents_are_errors_not_guesses() {
        assert!(matches!(Domain::parse("<domain><name>x</domain>"), Err(DomainError::Xml(_))));
        assert_eq!(Domain::parse("<network/>"), Err(DomainError::Root("network".into())));
        let bad_mac = XML.replace("52:54:00:AB:CD:EF", "52:54:00:AB:CD");
        assert_eq!(Domain::parse(&bad_mac), Err(DomainError::Mac("52:54:00:AB:CD".into())));
        let two =
            XML.replace("</metadata>", "<v:authorization xmlns:v=\"urn:vmsentry:1\">x</v:authorization></metadata>");
        assert_eq!(Domain::parse(&two), Err(DomainError::Tokens(2)));
        // Entity expansion (billion laughs) is refused at the DTD.
        let bomb = "<!DOCTYPE d [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><domain><name>&b;</name></domain>";
        assert!(matches!(Domain::parse(bomb), Err(DomainError::Xml(_))));
    }
}

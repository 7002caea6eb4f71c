//! Link-layer header types by name, for messages (the `LINKTYPE_*` names of libpcap 1.10's `dlt.h`).

/// The `LINKTYPE_*` name of a link type (as written in capture files), or of
/// a libpcap `DLT_*` value where it differs (12 and 14, raw IP), if known.
pub fn name(linktype: i32) -> Option<&'static str> {
    Some(match linktype {
        0 => "NULL",
        1 => "ETHERNET",
        3 => "AX25",
        6 => "IEEE802_5",
        7 => "ARCNET_BSD",
        8 => "SLIP",
        9 => "PPP",
        10 => "FDDI",
        12 | 14 => "RAW (DLT_RAW)",
        50 => "PPP_HDLC",
        51 => "PPP_ETHER",
        100 => "ATM_RFC1483",
        101 => "RAW",
        104 => "C_HDLC",
        105 => "IEEE802_11",
        107 => "FRELAY",
        108 => "LOOP",
        113 => "LINUX_SLL",
        114 => "LTALK",
        117 => "PFLOG",
        119 => "IEEE802_11_PRISM",
        122 => "IP_OVER_FC",
        123 => "SUNATM",
        127 => "IEEE802_11_RADIOTAP",
        129 => "ARCNET_LINUX",
        138 => "APPLE_IP_OVER_IEEE1394",
        139 => "MTP2_WITH_PHDR",
        140 => "MTP2",
        141 => "MTP3",
        142 => "SCCP",
        143 => "DOCSIS",
        144 => "LINUX_IRDA",
        147..=162 => "USER",
        163 => "IEEE802_11_AVS",
        165 => "BACNET_MS_TP",
        166 => "PPP_PPPD",
        169 => "GPRS_LLC",
        177 => "LINUX_LAPD",
        187 => "BLUETOOTH_HCI_H4",
        189 => "USB_LINUX",
        192 => "PPI",
        195 => "IEEE802_15_4_WITHFCS",
        196 => "SITA",
        197 => "ERF",
        201 => "BLUETOOTH_HCI_H4_WITH_PHDR",
        202 => "AX25_KISS",
        203 => "LAPD",
        204 => "PPP_WITH_DIR",
        215 => "IEEE802_15_4_NONASK_PHY",
        220 => "USB_LINUX_MMAPPED",
        224 => "FC_2",
        227 => "CAN_SOCKETCAN",
        228 => "IPV4",
        229 => "IPV6",
        231 => "DBUS",
        235 => "DVB_CI",
        239 => "NFLOG",
        240 => "NETANALYZER",
        247 => "INFINIBAND",
        249 => "USBPCAP",
        251 => "BLUETOOTH_LE_LL",
        252 => "WIRESHARK_UPPER_PDU",
        253 => "NETLINK",
        254 => "BLUETOOTH_LINUX_MONITOR",
        255 => "BLUETOOTH_BREDR_BB",
        256 => "BLUETOOTH_LE_LL_WITH_PHDR",
        257 => "PROFIBUS_DL",
        258 => "PKTAP",
        259 => "EPON",
        260 => "IPMI_HPM_2",
        263 => "WATTSTOPPER_DLM",
        264 => "ISO_14443",
        266 => "USB_DARWIN",
        267 => "OPENFLOW",
        268 => "SDLC",
        270 => "LORATAP",
        271 => "VSOCK",
        272 => "NORDIC_BLE",
        274 => "ETHERNET_MPACKET",
        276 => "LINUX_SLL2",
        279 => "EBHSCR",
        280 => "VPP_DISPATCH",
        281 => "DSA_TAG_BRCM",
        283 => "IEEE802_15_4_TAP",
        288 => "USB_2_0",
        _ => return None,
    })
}

/// `NAME (N)` or `N` for one not in the list.
pub fn describe(linktype: i32) -> String {
    match name(linktype) {
        Some("USER") => format!("USER{} ({linktype})", linktype - 147),
        Some(n) => format!("{n} ({linktype})"),
        None => format!("link type {linktype}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_what_the_number_is() {
        assert_eq!(describe(101), "RAW (101)");
        assert_eq!(describe(127), "IEEE802_11_RADIOTAP (127)");
        assert_eq!(describe(149), "USER2 (149)");
        assert_eq!(describe(65000), "link type 65000");
    }
}

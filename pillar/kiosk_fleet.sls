# Sample fleet inventory: the lab runs on it (every address on loopback).
# Schema and validation: _utils/fleet_inventory.py; check a real one with
#   salt-run kiosk_fleet.inventory
# In production, VLANs are real subnets (e.g. 10.20.1.0/24), wol_port is 9,
# repo_port 80 (the default) and each Pi lists, per VLAN, the source address
# of its interface there. Kiosks download releases from
# http://<their Pi's address on their VLAN>:<repo_port>/kiosk-releases/
# (nginx, states/kiosk_fleet/release_repo.sls; set its pillar
# kiosk_release_repo:port to the same port).
kiosk_fleet:
  campuses:
    riverside:
      timezone: Asia/Shanghai
      wol_port: 40009            # lab: unprivileged port; production: 9
      repo_port: 8080            # lab: unprivileged port; production: 80 (the default)
      service_port: 3389
      vlans:
        hall: {network: 127.0.1.0/24}       # broadcast 127.0.1.255
        upstairs: {network: 127.0.2.0/24}
      pis:
        pi-riverside-1: {vlans: {hall: {source: 127.0.1.2}, upstairs: {source: 127.0.2.2}}}
        pi-riverside-2: {vlans: {hall: {source: 127.0.1.3}, upstairs: {source: 127.0.2.3}}}
      kiosks:
        kiosk-riverside-01: {mac: "52:54:00:10:01:01", ip: 127.0.1.11, vlan: hall, location: "Ground floor, registration"}
        kiosk-riverside-02: {mac: "52:54:00:10:01:02", ip: 127.0.1.12, vlan: hall, location: "Ground floor, payment"}
        kiosk-riverside-10: {mac: "52:54:00:10:02:10", ip: 127.0.2.10, vlan: upstairs, location: "First floor, outpatients"}
        kiosk-riverside-11: {mac: "52:54:00:10:02:11", ip: 127.0.2.11, vlan: upstairs, location: "Emergency hall (24/7)"}
    hillside:
      timezone: Asia/Shanghai
      wol_port: 40009
      repo_port: 8080
      vlans:
        lobby: {network: 127.0.3.0/24}
      pis:
        pi-hillside-1: {vlans: {lobby: {source: 127.0.3.2}}}
        pi-hillside-2: {vlans: {lobby: {source: 127.0.3.3}}}
      kiosks:
        kiosk-hillside-01: {mac: "52-54-00-20-03-01", ip: 127.0.3.11, vlan: lobby, location: "Lobby, left"}
        kiosk-hillside-02: {mac: "5254.0020.0302", ip: 127.0.3.12, vlan: lobby, location: "Lobby, right"}
        kiosk-hillside-03: {mac: "525400200303", ip: 127.0.3.13, vlan: lobby, location: "Pharmacy"}

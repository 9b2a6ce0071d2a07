# Parameters of the change templates (states/kiosk_fleet/changes/).
# hosts: the NAT mapping of each campus, applied by the "hosts" template:
#   salt-run kiosk_change.apply template=hosts campus=riverside
kiosk_fleet_changes:
  hosts:
    riverside:
      his.riverside.hospital.local: 127.0.50.15     # production: the campus NAT address
      pay.riverside.hospital.local: 127.0.50.16
    hillside:
      his.hillside.hospital.local: 127.0.60.15
      pay.hillside.hospital.local: 127.0.60.16

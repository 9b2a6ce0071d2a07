base:
  '*':
    - kiosk_fleet
    - kiosk_fleet_changes

base:
  '*':
    - kiosk_fleet

{#- A multi-step change: the campus hosts entries, then the kiosk user's
    desktop icons hidden. Templates compose with include; the runner passes
    the same params to every step. #}
include:
  - kiosk_fleet.changes.hosts
  - kiosk_fleet.changes.hide_desktop_icons

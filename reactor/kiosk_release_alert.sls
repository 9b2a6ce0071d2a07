{#- kiosk/release/alert: a Pi or a kiosk refused a copy of a release (size,
    md5, sha256 or signature mismatch) or an install failed. Hand the tag and
    the data to runner kiosk_alert.event: the sender id (data['id'], a claim
    nothing authenticates behind a syndic) must be a Pi or kiosk of the
    inventory, the payload is built and checked in Python
    (_utils/fleet_alerts.py), at most kiosk_fleet_alerts:rate_limit per
    sender per window.

      reactor:
        - 'kiosk/release/alert':
            - /opt/kiosk-fleet/reactor/kiosk_release_alert.sls #}
kiosk_release_alert_webhook:
  runner.kiosk_alert.event:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}

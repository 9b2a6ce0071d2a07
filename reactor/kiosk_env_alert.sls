{#- A Pi's kiosk_env beacon raised an alert (temperature/humidity out of range,
    smoke), an all-clear or a sensor error. Hand the tag and the data to
    runner kiosk_alert.event, which decides: the id in the data must be the
    Pi the tag names and a Pi of the inventory, the Pi is read again
    (kiosk_env.read) and only an alert the reading confirms is posted, at
    most kiosk_fleet_alerts:rate_limit per Pi per window. Nothing in the
    event is trusted here: a kiosk can fire any tag with any data.

    Top master reactor config, the plain tag only:

      reactor:
        - 'salt/beacon/*/kiosk_env/alert':
            - /opt/kiosk-fleet/reactor/kiosk_env_alert.sls
        - 'salt/beacon/*/kiosk_env/sensor_error':     # optional
            - /opt/kiosk-fleet/reactor/kiosk_env_alert.sls
        - 'salt/beacon/*/kiosk_env/clear':            # optional
            - /opt/kiosk-fleet/reactor/kiosk_env_alert.sls

    A Pi's event reaches the top master twice, as salt/beacon/<pi>/... and as
    syndic/<pi>/salt/beacon/<pi>/...; the patterns above start with salt/ so
    they never match the syndic copy (a '*kiosk_env/alert' glob would post
    every alert twice). #}
kiosk_env_alert_webhook:
  runner.kiosk_alert.event:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}

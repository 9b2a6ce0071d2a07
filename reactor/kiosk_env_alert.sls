{#- A Pi's kiosk_env beacon raised an alert (temperature/humidity out of range,
    smoke) or a sensor error: post it to the webhook (runner kiosk_env.notify,
    which hands the payload to kiosk_alert.post; smoke is severity critical).

    Top master reactor config, the plain tag only:

      reactor:
        - 'salt/beacon/*/kiosk_env/alert':
            - /opt/kiosk-fleet/reactor/kiosk_env_alert.sls
        - 'salt/beacon/*/kiosk_env/sensor_error':     # optional
            - /opt/kiosk-fleet/reactor/kiosk_env_alert.sls

    A Pi's event reaches the top master twice, as salt/beacon/<pi>/... and as
    syndic/<pi>/salt/beacon/<pi>/...; the patterns above start with salt/ so
    they never match the syndic copy (a '*kiosk_env/alert' glob would post
    every alert twice). The same SLS also takes a hand-fired kiosk/env/alert.
    The Pi id comes from the event load (data['id']) and must match the tag. #}
{%- set pi = data.get('id', '') %}
{%- set parts = tag.split('/') %}
{%- set from_beacon = parts | length >= 5 and parts[0] == 'salt' and parts[1] == 'beacon' and parts[3] == 'kiosk_env' %}
{%- set hand_fired = tag.startswith('kiosk/env/') %}
{%- if pi and pi is string and pi | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$')
      and ((from_beacon and parts[2] == pi) or hand_fired) %}
kiosk_env_alert_webhook:
  runner.kiosk_env.notify:
    - args:
      - tag: {{ tag | json }}
      - data:
          id: {{ pi | json }}
{%- for key in ['metric', 'sensor', 'value', 'bound', 'limit', 'range', 'unit', 'campus', 'error', 'severity'] %}
{%- if data.get(key) is not none %}
          {{ key }}: {{ data[key] | json }}
{%- endif %}
{%- endfor %}
{%- endif %}

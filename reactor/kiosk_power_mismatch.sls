{#- A kiosk is not in the power state its schedule (or hold) expects after the
    last verification check (+15 min after the sweep that changed it), or an
    explicit `salt-run kiosk_power.verify kiosks=...` found it wrong: post an
    alert to the webhook (runner kiosk_alert.post, URL from the top master's
    `kiosk_fleet_alerts:webhook_url`).

    The event is fired by the kiosk_power.verify runner on the top master
    itself (event.send), so it arrives once, with the plain tag. Top master
    reactor config:

      reactor:
        - 'kiosk/power/mismatch':
            - /opt/kiosk-fleet/reactor/kiosk_power_mismatch.sls

    Payload POSTed: {severity: warning, summary, kiosk, campus, expected,
    observed, since}. Fields are checked before use: anything unexpected in
    the event (a hand-fired one) posts nothing. #}
{%- set kiosk = data.get('kiosk', '') %}
{%- set campus = data.get('campus', '') %}
{%- set expected = data.get('expected', '') %}
{%- set observed = data.get('observed', '') %}
{%- set since = data.get('since', '') %}
{%- set name_re = '^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$' %}
{%- if tag == 'kiosk/power/mismatch'
      and kiosk is string and kiosk | regex_match(name_re)
      and campus is string and campus | regex_match(name_re)
      and expected in ['on', 'off'] and observed in ['on', 'off', 'unknown']
      and since is string and since | regex_match('^([0-9T:+Z.-]{10,40})$') %}
kiosk_power_mismatch_webhook:
  runner.kiosk_alert.post:
    - args:
      - payload:
          severity: warning
          summary: {{ ('kiosk ' ~ kiosk ~ ' (' ~ campus ~ ') should be ' ~ expected ~ ', observed ' ~ observed ~ ' since ' ~ since) | json }}
          kind: power_mismatch
          kiosk: {{ kiosk | json }}
          campus: {{ campus | json }}
          expected: {{ expected | json }}
          observed: {{ observed | json }}
          since: {{ since | json }}
{%- endif %}

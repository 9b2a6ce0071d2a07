{#- kiosk/release/alert: a Pi or a kiosk refused a copy of a release (size,
    md5, sha256 or signature mismatch) or an install failed. Nothing went
    live; tell the operators (kiosk_alert.post to the webhook).

      reactor:
        - 'kiosk/release/alert':
            - /opt/kiosk-fleet/reactor/kiosk_release_alert.sls #}
{%- set minion = data.get('id', '') %}
{%- set payload = data.get('data') if data.get('data') is mapping else data %}
{%- if minion is string and minion | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$') %}
kiosk_release_alert_webhook:
  runner.kiosk_alert.post:
    - args:
      - payload:
          severity: warning
          summary: {{ ('release %s %s refused on %s (%s): %s' | format(payload.get('name'), payload.get('version'),
                       minion, payload.get('hop'), payload.get('error')))[:900] | json }}
          kind: kiosk_release
          minion: {{ minion | json }}
          campus: {{ payload.get('campus') | json }}
          name: {{ payload.get('name') | json }}
          version: {{ payload.get('version') | string | json }}
          hop: {{ payload.get('hop') | json }}
          source: {{ payload.get('source') | json }}
          error: {{ (payload.get('error') | string)[:2000] | json }}
{%- endif %}

{#- kiosk/release/staged: a Pi verified a release and put it in its
    repository (fired by kiosk_pkg.stage). Push the install to the kiosks of
    the Pi's campus if the campus is pinned to that version. Every Pi of a
    campus fires this, and each event reaches the top master twice (plain
    and syndic/<pi>/...): match the plain tag only; kiosk_release.push
    pushes once per campus pin, whatever the number of events.

    The Pi id comes from the event load (data['id']), never from the
    payload, and the runner derives the campus from it.

      reactor:
        - 'kiosk/release/staged':
            - /opt/kiosk-fleet/reactor/kiosk_release_staged.sls #}
{%- set pi = data.get('id', '') %}
{%- set payload = data.get('data') if data.get('data') is mapping else data %}
{%- set name = payload.get('name', '') %}
{%- set version = payload.get('version', '') | string %}
{%- if pi is string and pi | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$')
      and name is string and name | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$')
      and version | regex_match('^([0-9]{1,9}(\.[0-9]{1,9}){0,3})$') %}
kiosk_release_push_to_campus:
  runner.kiosk_release.push:
    - args:
      - name: {{ name | json }}
      - version: {{ version | json }}
      - pi: {{ pi | json }}
{%- endif %}

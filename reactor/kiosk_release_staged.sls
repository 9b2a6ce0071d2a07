{#- kiosk/release/staged: a Pi verified a release and put it in its
    repository (fired by kiosk_pkg.stage). Every Pi of a campus fires this,
    and each event reaches the top master twice (plain and
    syndic/<pi>/...): match the plain tag only.

    The event is only a hint: a kiosk can forge it, data['id'] included. So
    kiosk_release.push re-checks everything: the id must be a Pi of the
    inventory, the campus must be pinned to that version, a Pi of the campus
    must report the pin live (kiosk_pkg.repo_status), and the campus is
    marked pushed only after a push that succeeded (once per pin serial). A
    forged event for a campus already pushed, or whose Pis do not hold the
    pin, does nothing.

      reactor:
        - 'kiosk/release/staged':
            - /opt/kiosk-fleet/reactor/kiosk_release_staged.sls #}
{%- set pi = data.get('id', '') %}
{%- set payload = data.get('data') if data.get('data') is mapping else data %}
{%- set name = payload.get('name', '') %}
{%- set version = payload.get('version', '') | string %}
{%- if pi is string and pi | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})\\Z')
      and name is string and name | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})\\Z')
      and version | regex_match('^([0-9]{1,9}(\\.[0-9]{1,9}){0,3})\\Z') %}
kiosk_release_push_to_campus:
  runner.kiosk_release.push:
    - args:
      - name: {{ name | json }}
      - version: {{ version | json }}
      - pi: {{ pi | json }}
{%- endif %}

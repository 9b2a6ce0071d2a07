{#- kiosk/release/published: fired on the top master by kiosk_release.publish
    (arrives once). When the release names target campuses (publish
    campuses=...), stage it on their Pis: one Pi per campus copies it over
    the WAN, the others from that Pi. Each Pi then fires kiosk/release/staged
    (reactor kiosk_release_staged.sls), which pushes the install.

    Top master reactor config:

      reactor:
        - 'kiosk/release/published':
            - /opt/kiosk-fleet/reactor/kiosk_release_published.sls #}
{%- set name = data.get('name', '') %}
{%- set version = data.get('version', '') | string %}
{%- set campuses = data.get('campuses') or [] %}
{%- if name is string and name | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$')
      and version | regex_match('^([0-9]{1,9}(\.[0-9]{1,9}){0,3})$')
      and campuses is sequence and campuses is not string and campuses | length > 0 %}
kiosk_release_stage_on_pis:
  runner.kiosk_release.stage:
    - args:
      - name: {{ name | json }}
      - version: {{ version | json }}
      - campuses: {{ campuses | json }}
{%- endif %}

{#- kiosk/release/published: fired on the top master by kiosk_release.publish.
    The event is only a hint: a kiosk can put this tag, with any data, on
    its Pi master's bus (event.fire_master with preload) and the syndic
    forwards it. So the reactor passes the names on and
    kiosk_release.on_published stages only what publish recorded as waiting
    (campuses pinned to that version with that serial), once per release,
    campus and serial. A replayed or invented event starts no job and
    changes no state.

    Top master reactor config:

      reactor:
        - 'kiosk/release/published':
            - /opt/kiosk-fleet/reactor/kiosk_release_published.sls #}
{%- set name = data.get('name', '') %}
{%- set version = data.get('version', '') | string %}
{%- set campuses = data.get('campuses') or [] %}
{%- if name is string and name | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})\\Z')
      and version | regex_match('^([0-9]{1,9}(\\.[0-9]{1,9}){0,3})\\Z')
      and campuses is sequence and campuses is not string and campuses | length > 0
      and campuses | length <= 1000 %}
kiosk_release_stage_what_waits:
  runner.kiosk_release.on_published:
    - args:
      - name: {{ name | json }}
      - version: {{ version | json }}
      - campuses: {{ campuses | json }}
{%- endif %}

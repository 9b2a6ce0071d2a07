{#- Startup state for kiosks (minion config: startup_states: sls,
    sls_list: [kiosk_fleet.boot]): tell the fleet this kiosk is up, so the
    top master's kiosk/boot reactor syncs the pack to it (a kiosk that was
    off during the last sync comes back without the pack's modules). #}
{#- the campus of its pillar slice (chosen by the master from the minion id),
    not the grain; the reactor treats it as a hint only #}
{%- set campuses = salt['pillar.get']('kiosk_fleet:campuses', {}) %}
announce_kiosk_boot:
  event.send:
    - name: kiosk/boot
    - data:
        campus: {{ ((campuses | list | first) if campuses | length == 1 else '') | json }}

{#- then follow the campus's release pins (kiosk_fleet.release); a new PC
    that has not got the pack yet skips this until its next boot #}
{%- if 'kiosk_pkg.check_update' in salt %}
include:
  - kiosk_fleet.release
{%- endif %}

{#- Startup state for kiosks (minion config: startup_states: sls,
    sls_list: [kiosk_fleet.boot]): tell the fleet this kiosk is up, so the
    top master's kiosk/boot reactor syncs the pack to it (a kiosk that was
    off during the last sync comes back without the pack's modules) and
    records the boot (kiosk_restarts.boot). #}
{#- the campus of its pillar slice (chosen by the master from the minion id),
    not the grain; the reactor treats it as a hint only #}
{%- set campuses = salt['pillar.get']('kiosk_fleet:campuses', {}) %}
{#- the boot time and the reason of the last unclean shutdown (Windows event
    41/6008), for listeners: hints too, the top master asks the kiosk again.
    last_boot never fails for an unreadable reason, so the announcement
    always goes out; a kiosk without the pack's module yet sends the boot
    time of Salt's ps module. #}
{%- if 'kiosk_power.last_boot' in salt %}
{%- set booted = salt['kiosk_power.last_boot']() %}
{%- else %}
{%- set booted = {'boot_time': salt['ps.boot_time'](), 'shutdown': None} %}
{%- endif %}
announce_kiosk_boot:
  event.send:
    - name: kiosk/boot
    - data:
        campus: {{ ((campuses | list | first) if campuses | length == 1 else '') | json }}
        boot_time: {{ booted.get('boot_time') | json }}
        shutdown: {{ booted.get('shutdown') | json }}

{#- then follow the campus's release pins (kiosk_fleet.release); a new PC
    that has not got the pack yet skips this until its next boot #}
{%- if 'kiosk_pkg.check_update' in salt %}
include:
  - kiosk_fleet.release
{%- endif %}

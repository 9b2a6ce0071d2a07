{#- A kiosk as a minion of every Pi of its campus (Salt's hot multi-master): the
    settings of fleet_keys.kiosk_minion_config (the master list from the inventory
    in the kiosk's pillar, and each multi-master setting with its reason) in
    minion.d/kiosk_fleet.conf next to the minion's config file, then the minion
    restarted if the file changed, after this job has returned: on Windows through
    Salt's own scheduled task (win_service.restart: a 2-second wait, then net stop /
    net start), elsewhere through a systemd timer restart_delay seconds later.

    Settings (minion config, then pillar; config.get):
      kiosk_fleet:
        minion_config_file: <config dir>/minion.d/kiosk_fleet.conf
        minion_overrides: {}     # settings of fleet_keys.KIOSK_MINION_SETTINGS to change
        restart: True            # False: never restart salt-minion (tests)
        restart_delay: 10        # systemd: seconds between the state's end and the restart

    The Pis must hold the campus key and list the kiosk first
    (salt-run kiosk_fleet.campus_keys), else the new masters do not accept it.

    Apply with: salt -G kiosk_fleet_role:kiosk state.apply kiosk_fleet.kiosk_minion #}
{%- set default_file = salt['file.join'](salt['file.dirname'](opts['conf_file']), 'minion.d', 'kiosk_fleet.conf') %}
{%- set config_file = salt['config.get']('kiosk_fleet:minion_config_file', default_file) %}
{%- set restart = salt['config.get']('kiosk_fleet:restart', True) %}
{%- set restart_delay = salt['config.get']('kiosk_fleet:restart_delay', 10) | int %}

kiosk_fleet_minion_config:
  kiosk_fleet.minion_config:
    - name: {{ config_file | json }}

{%- if restart %}

kiosk_fleet_minion_restart:
  module.run:
{%-   if grains['kernel'] == 'Windows' %}
    - service.restart:
      - name: salt-minion
{%-   else %}
    - cmd.run_all:
      - cmd: {{ ['systemd-run', '--on-active=' ~ restart_delay, '--timer-property=AccuracySec=1s',
                 'systemctl', 'restart', 'salt-minion'] | json }}
      - python_shell: False
{%-   endif %}
    - onchanges:
      - kiosk_fleet: kiosk_fleet_minion_config
{%- endif %}

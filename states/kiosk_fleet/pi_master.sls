{#- A campus Pi's salt-master as one of the masters of every kiosk of its campus.

    - the campus master key pair (all Pis of a campus share it: a kiosk keeps one
      minion_master.pub for all its masters), sent by the top master sealed to this
      Pi's own key: salt-run kiosk_fleet.campus_keys applies this state with pillar
        kiosk_fleet_master_key: {sealed: <envelope>, public: <campus public key PEM>}
      Without that pillar the key is left as it is (autosign and config still rendered).
    - the same public key pinned for this Pi's own minion (its minion_master.pub, as
      kiosk_fleet.master_trust does on kiosks): the minion of a Pi is a minion of that Pi's
      master, and refuses a master whose key changed.
    - the master's autosign file: the ids of this Pi's campus from the inventory in its
      pillar (its Pis and kiosks), nothing else; no auto_accept, no open_mode.
    - the master config snippet <master_config_dir>/kiosk_fleet.conf naming that file.
    - salt-master restarted when the key or the snippet changed (the autosign file is
      re-read by the master when it changes: no restart for that), restart_delay seconds
      later through a systemd timer (systemd-run): the job that applies this state returns
      through this very master and its syndic, and a restart at once would race that return.

    Settings (minion config, then pillar; config.get):
      kiosk_fleet:
        master_pki_dir: /etc/salt/pki/master
        master_config_dir: /etc/salt/master.d
        autosign_file: /etc/salt/autosign.conf
        restart: True            # False: never restart salt-master (tests)
        master_worker_threads: 3 # the Pi master's worker_threads (Salt's default is 5)
        restart_delay: 10        # seconds between the state's end and the restart (1-3600);
                                 # pillar kiosk_fleet_master_key:restart_delay wins (campus_keys
                                 # staggers the Pis of a campus so they never restart together)

    Apply with: salt-run kiosk_fleet.campus_keys campus=riverside   (key, autosign, config)
           or:  salt 'pi-*' state.apply kiosk_fleet.pi_master       (autosign and config only) #}
{%- set pki_dir = salt['config.get']('kiosk_fleet:master_pki_dir', '/etc/salt/pki/master') %}
{%- set conf_dir = salt['config.get']('kiosk_fleet:master_config_dir', '/etc/salt/master.d') %}
{%- set autosign_file = salt['config.get']('kiosk_fleet:autosign_file', '/etc/salt/autosign.conf') %}
{%- set restart = salt['config.get']('kiosk_fleet:restart', True) %}
{%- set worker_threads = salt['config.get']('kiosk_fleet:master_worker_threads', 3) %}
{%- set key = salt['pillar.get']('kiosk_fleet_master_key', {}) %}
{%- set restart_delay = key.get('restart_delay') if key.get('restart_delay') is not none
                        else salt['config.get']('kiosk_fleet:restart_delay', 10) %}
{%- set delay_ok = restart_delay is integer and restart_delay is not boolean and 1 <= restart_delay <= 3600 %}

{%- if key %}
kiosk_fleet_campus_key:
  kiosk_fleet.master_key:
    - name: {{ pki_dir | json }}
    - sealed: {{ key.get('sealed') | json }}
    - public: {{ key.get('public') | json }}

kiosk_fleet_campus_key_pinned:
  kiosk_fleet.master_pub:
    - name: {{ salt['file.join'](opts['pki_dir'], 'minion_master.pub') | json }}
    - public: {{ key.get('public') | json }}
    - require:
      - kiosk_fleet: kiosk_fleet_campus_key
{%- else %}
kiosk_fleet_campus_key:
  test.succeed_without_changes:
    - name: "no kiosk_fleet_master_key in pillar: the campus key is left as it is (salt-run kiosk_fleet.campus_keys sends it)"
{%- endif %}

kiosk_fleet_autosign:
  kiosk_fleet.autosign:
    - name: {{ autosign_file | json }}

kiosk_fleet_pi_master_config:
  file.serialize:
    - name: {{ (conf_dir ~ '/kiosk_fleet.conf') | json }}
    - serializer: yaml
    - makedirs: True
    - mode: '0644'
    - dataset:
        # kiosks are accepted only if their campus lists them (autosign_file); never all
        auto_accept: False
        open_mode: False
        autosign_file: {{ autosign_file | json }}
        # a kiosk that lost power leaves a half-open connection on the Pi: probed after 60 s idle,
        # 3 x 20 s, so the Pi's presence (kiosk_scan.presence) drops it in about 2 minutes, not
        # Salt's 300 s idle plus the kernel's probes
        tcp_keepalive: True
        tcp_keepalive_idle: 60
        tcp_keepalive_cnt: 3
        tcp_keepalive_intvl: 20
        # ~30 kiosks per Pi: 3 request workers (each ~27 MiB PSS, measured) instead of Salt's 5
        worker_threads: {{ worker_threads | json }}

{%- if restart and not delay_ok %}

kiosk_fleet_pi_master_restart:
  test.fail_without_changes:
    - name: {{ ('restart_delay: ' ~ (restart_delay | string | truncate(40)) ~ ' is not a number of seconds (1-3600); salt-master not restarted') | json }}
{%- elif restart %}

kiosk_fleet_pi_master_restart:
  module.run:
    - cmd.run_all:
      - cmd: {{ ['systemd-run', '--on-active=' ~ restart_delay, '--timer-property=AccuracySec=1s',
                 'systemctl', 'restart', 'salt-master'] | json }}
      - python_shell: False
    - onchanges:
      - kiosk_fleet: kiosk_fleet_campus_key
      - file: kiosk_fleet_pi_master_config
{%- endif %}

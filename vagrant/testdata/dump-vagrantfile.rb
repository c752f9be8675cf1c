# dump-vagrantfile.rb: print, as JSON, every machine the Vagrantfile in the
# current directory defines, as Vagrant itself loads it: Vagrant's own
# library reads the Vagrantfile, merges the machine blocks and provider
# overrides and finalizes the configuration, exactly as `vagrant up` would,
# but without booting anything or needing a provider installed.
#
#   cd vagrant && VAGRANT_HOME=$(mktemp -d) ruby testdata/dump-vagrantfile.rb
#
# vagrant_test.go compares the output with a golden file, and with
# keepalived/topology.json. The Vagrantfile's Vagrant.require_version must
# accept the Vagrant that runs this (the tests relax it in their copy when
# the installed Vagrant is older: vagrant_test.go, labCopy). Uploaded files are named relative to the current
# directory, so the output does not depend on where the repository is.
# vagrant-libvirt is not installed where the tests run, so a stand-in config
# class with the two settings the Vagrantfile uses (memory, cpus) is
# registered for the libvirt provider; any other setting shows up in
# "invalid", as it would with the real plugin for a misspelt one.

require "json"
require "pathname"
require "tmpdir"
require "vagrant"

module ChatrelayTest
  class LibvirtConfig < Vagrant.plugin("2", :config)
    attr_accessor :memory, :cpus

    def initialize
      @memory = UNSET_VALUE
      @cpus = UNSET_VALUE
    end

    def finalize!
      @memory = nil if @memory == UNSET_VALUE
      @cpus = nil if @cpus == UNSET_VALUE
    end
  end

  class LibvirtPlugin < Vagrant.plugin("2")
    name "libvirt stand-in for tests"
    config(:libvirt, :provider) { LibvirtConfig }
  end
end

def invalid(cfg)
  (cfg.instance_variable_get(:@__invalid_methods) || []).to_a.sort
end

# VirtualBox's memory= and cpus= become `VBoxManage modifyvm` customizations.
def modifyvm(vb, flag)
  vb.customizations.each do |_event, cmd|
    next unless cmd[0] == "modifyvm"
    i = cmd.index(flag)
    return cmd[i + 1].to_s if i
  end
  nil
end

Dir.mktmpdir("chatrelay-vagrant-data") do |data|
  env = Vagrant::Environment.new(
    cwd: Dir.pwd,
    home_path: ENV.fetch("VAGRANT_HOME"),
    local_data_path: data,
    ui_class: Vagrant::UI::Silent,
  )
  vf = env.vagrantfile
  machines = vf.machine_names.map do |name|
    # validate_provider=false: no VirtualBox here, and none is needed to
    # read the configuration.
    result = vf.machine_config(name, :virtualbox, env.boxes, nil, false)
    cfg = result[:config]
    # The same machine as `vagrant up --provider=libvirt` loads it: only
    # the box_url of the libvirt block's override differs.
    lv_cfg = vf.machine_config(name, :libvirt, env.boxes, nil, false)[:config]
    vb = cfg.vm.get_provider_config(:virtualbox)
    lv = cfg.vm.get_provider_config(:libvirt)
    {
      "name" => name.to_s,
      "hostname" => cfg.vm.hostname,
      "box" => cfg.vm.box,
      "box_url" => { "virtualbox" => cfg.vm.box_url, "libvirt" => lv_cfg.vm.box_url },
      "networks" => cfg.vm.networks.map { |type, opts|
        o = opts.reject { |k, _| k == :id }
        { "type" => type.to_s, "options" => o.map { |k, v| [k.to_s, v] }.to_h }
      },
      "synced_folders" => cfg.vm.synced_folders.map { |id, o|
        { "id" => id.to_s, "guestpath" => o[:guestpath], "disabled" => o[:disabled] ? true : false }
      },
      "virtualbox" => {
        "name" => vb.name,
        "memory" => modifyvm(vb, "--memory"),
        "cpus" => modifyvm(vb, "--cpus"),
        "invalid" => invalid(vb),
      },
      "libvirt" => {
        "class" => lv.class.name,
        "memory" => lv.respond_to?(:memory) ? lv.memory : nil,
        "cpus" => lv.respond_to?(:cpus) ? lv.cpus : nil,
        "invalid" => invalid(lv),
      },
      "provisioners" => cfg.vm.provisioners.map { |p|
        c = p.config
        h = { "name" => p.name.to_s, "type" => p.type.to_s }
        %i[path args env inline privileged source destination].each do |k|
          next unless c.respond_to?(k)
          v = c.public_send(k)
          next if v.nil? || v == Vagrant::Plugin::V2::Config::UNSET_VALUE
          v = Pathname.new(v).relative_path_from(Pathname.pwd).to_s if k == :source
          h[k.to_s] = v
        end
        h
      },
    }
  end
  puts JSON.pretty_generate({ "machines" => machines })
end
